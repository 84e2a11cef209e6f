"""Clients for the Image Enhancer gRPC service.

`core` is shared and pure Python; `grpc_client.EnhancerClient` uses grpcio; `lite.LiteClient` offers the
same API on pure-Python packages. Import the one you need: this package itself imports neither, so that
GIMP's Python (no compiled wheels) can use `lite` without grpcio, numpy or torch installed.
"""
