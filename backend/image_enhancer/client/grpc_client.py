"""Client on grpcio (compiled): used by the CLI's `enhance --server`, the tests and scripts.

    with EnhancerClient("127.0.0.1:50051") as client:
        header, data = client.enhance(rgba_bytes, 640, 480, 4, "u8", model="realesr-general-x4v3",
                                      on_progress=lambda p: print(p.stage, p.done, p.total))

`lite.LiteClient` offers the same methods on pure-Python packages.
"""

from __future__ import annotations

import itertools
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..v1 import enhancer_pb2 as pb
from ..v1 import enhancer_pb2_grpc
from . import core
from .core import DEFAULT_ADDRESS, EnhancerError, ImageInfo, ModelInfo, Options, ProgressCallback, ServerInfo

# numpy dtypes of the wire's sample types (little-endian, as the wire is).
_DTYPES = {"u8": np.dtype("<u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


def _error(error: grpc.RpcError) -> EnhancerError:
    return core.error_from_status(error.code().name, error.details() or "")


class EnhancerClient:
    """A connection to an Image Enhancer server; methods raise `EnhancerError`."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        chunk_size: int = core.DEFAULT_CHUNK,
    ) -> None:
        """`token` is sent as `authorization: Bearer` metadata; `tls` (implied by `root_certificates`,
        PEM bytes; None trusts the system's roots) encrypts the connection."""
        core.split_address(address)  # reject malformed addresses with a clear message
        options = [
            ("grpc.max_receive_message_length", core.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", core.MAX_MESSAGE_BYTES),
        ]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = enhancer_pb2_grpc.EnhancerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = core.auth_metadata(token)
        self._chunk_size = chunk_size

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EnhancerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, timeout: float = 5.0) -> str:
        """The server's health status name: "SERVING", "NOT_SERVING", ..."""
        request = health_pb2.HealthCheckRequest(service=core.SERVICE_NAME)
        try:
            reply = self._health.Check(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until the server answers SERVING (it loads and warms models first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=max(0.1, min(2.0, deadline - time.monotonic()))) == "SERVING":
                    return
            except EnhancerError as error:
                if error.kind not in ("unavailable", "deadline"):
                    raise
            if time.monotonic() >= deadline:
                raise EnhancerError("unavailable", f"the server was not serving within {timeout:g} s")
            time.sleep(0.1)

    def list_models(self, timeout: float = 30.0) -> list[ModelInfo]:
        try:
            reply = self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None
        return [core.model_info(m) for m in reply.models]

    def describe(self, timeout: float = 30.0) -> ServerInfo:
        try:
            reply = self._stub.DescribeServer(
                pb.DescribeServerRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise _error(error) from None
        return core.server_info(reply)

    def enhance(
        self,
        data: bytes | bytearray | memoryview,
        width: int,
        height: int,
        channels: int,
        sample_type: str = "u8",
        options: Options | None = None,
        *,
        colour_encoding: str = "srgb",
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **option_fields: object,
    ) -> tuple[ImageInfo, bytes]:
        """Enhance raw samples (row-major, interleaved, little-endian); returns the result's layout and bytes.

        Options come as an `Options` or as its fields by keyword (model, scale, strength, tile,
        colour_fidelity, auto_contrast, alpha_mode). If `on_progress` raises, the job is cancelled on the
        server and the exception propagates.
        """
        options = options or Options(**option_fields)  # type: ignore[arg-type]
        image = ImageInfo(width, height, channels, sample_type, colour_encoding)
        requests = core.enhance_requests(data, image, options, self._chunk_size)
        start = next(requests)  # checks the layout against the data here, not in grpc's sending thread
        call = self._stub.Enhance(
            itertools.chain([start], requests), timeout=timeout, metadata=self._metadata
        )
        try:
            return core.assemble(call, on_progress)
        except grpc.RpcError as error:
            raise _error(error) from None
        except BaseException:
            call.cancel()
            raise

    def enhance_array(
        self,
        pixels: np.ndarray,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **option_fields: object,
    ) -> np.ndarray:
        """`enhance` for an H×W×C (or H×W) uint8/uint16/float32 array; returns an array of the same kind."""
        sample_type = next(
            (name for name, dtype in _DTYPES.items() if pixels.dtype == dtype.newbyteorder("=")), None
        )
        if sample_type is None or pixels.ndim not in (2, 3):
            raise EnhancerError(
                "invalid",
                f"expected an H×W×C uint8/uint16/float32 array, got {pixels.dtype} with shape {pixels.shape}",
            )
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        data = np.ascontiguousarray(pixels, dtype=_DTYPES[sample_type])
        info, result = self.enhance(
            data,
            width,
            height,
            channels,
            sample_type,
            on_progress=on_progress,
            timeout=timeout,
            **option_fields,
        )
        array = np.frombuffer(result, dtype=_DTYPES[sample_type]).reshape(
            info.height, info.width, info.channels
        )
        array = array.astype(pixels.dtype, copy=False)
        return array[:, :, 0] if pixels.ndim == 2 else array
