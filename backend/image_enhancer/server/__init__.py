"""gRPC server: service, validation, job queue, auth; the only place that converts protobuf messages.

Kept import-light: the `image-enhancer` command builds its `serve` arguments from here without
loading torch or grpc.
"""

DEFAULT_MAX_QUEUE = 8  # jobs that may wait behind the running one
MAX_QUEUE = 256  # each waiting job holds its uploaded image in memory
# Results made but not yet sent in full may hold this many MiB before the worker waits: room for eight
# 4096² RGBA results beside the running job's working memory.
DEFAULT_MAX_RESULT_MIB = 512
# A client that takes no data of its reply for this long is dropped (as an upload silent for as long is).
DEFAULT_READER_IDLE_S = 60.0
