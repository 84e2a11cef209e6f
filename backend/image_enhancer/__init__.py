"""Image Enhancer: AI super-resolution and restoration served over gRPC.

Kept import-light on purpose: the pure-Python client (used inside GIMP) imports this package
without torch or numpy being present.
"""

__version__ = "0.1.0"


def let_openmp_threads_sleep() -> None:
    """Make OpenMP's worker threads sleep between parallel regions unless the user chose otherwise;
    read when an OpenMP library loads, so called before PyTorch or ncnn is imported. Spinning threads
    keep the cores from whatever runs next on them: OpenVINO's inference right after PyTorch converted
    the picture took 4–5 ms longer of 60, and ncnn ran 5–10× slower on two busy cores."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
