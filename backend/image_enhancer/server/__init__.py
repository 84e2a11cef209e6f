"""gRPC server: service, validation, job queue, auth; the only place that converts protobuf messages."""
