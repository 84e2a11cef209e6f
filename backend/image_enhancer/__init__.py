"""Image Enhancer: AI super-resolution and restoration served over gRPC.

Kept import-light on purpose: the pure-Python client (used inside GIMP) imports this package
without torch or numpy being present.
"""

__version__ = "0.1.0"
