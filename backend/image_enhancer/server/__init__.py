"""gRPC server: service, validation, job queue, auth; the only place that converts protobuf messages.

Kept import-light: the `image-enhancer` command builds its `serve` arguments from here without
loading torch or grpc.
"""

DEFAULT_MAX_QUEUE = 8  # jobs that may wait behind the running one
MAX_QUEUE = 256  # each waiting job holds its uploaded image in memory
