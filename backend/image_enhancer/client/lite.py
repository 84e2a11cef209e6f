"""Client on pure-Python packages only (grpclib, h2, hpack, hyperframe, multidict, protobuf).

For interpreters that cannot load compiled wheels, such as GIMP's Python on Windows; the GIMP plug-in
vendors it with `core.py` and the generated `v1/enhancer_pb2.py`. Set
`PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python` and `MULTIDICT_NO_EXTENSIONS=1` where compiled builds of
those packages might be present but unusable.

Stable API, the same as `grpc_client.EnhancerClient` (blocking calls; an asyncio loop runs inside):

    with LiteClient("127.0.0.1:50051", token=None) as client:    # or "unix:/path/to/socket"
        client.wait_until_serving(timeout=60)
        client.health() -> "SERVING" | "NOT_SERVING" | ...
        client.list_models() -> list[ModelInfo]
        client.describe() -> ServerInfo
        info, data = client.enhance(data, width, height, channels, "u8" | "u16" | "f32",
                                    model="", scale=0.0, strength=None, tile=0, colour_fidelity=False,
                                    auto_contrast=0.0, alpha_mode="model", colour_encoding="srgb",
                                    on_progress=callback, timeout=None)

Every failure is an `EnhancerError` with a `kind` ("unavailable", "not_found", "invalid", "too_large",
"queue_full", "cancelled", "deadline", "unauthenticated", "protocol", "internal") and a human message.
If `on_progress` raises, the job is cancelled on the server and the exception propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto
from google.protobuf.message import Message
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..v1 import enhancer_pb2 as pb
from . import core
from .core import DEFAULT_ADDRESS, EnhancerError, ImageInfo, ModelInfo, Options, ProgressCallback, ServerInfo

# Large HTTP/2 windows: the default 64 KiB window would cap throughput on multi-megabyte chunks.
_WINDOW = 16 * core.MIB
_CALL_ERRORS = (GRPCError, asyncio.TimeoutError, StreamTerminatedError, OSError)
FieldType = FieldDescriptorProto.Type
Label = FieldDescriptorProto.Label
T = TypeVar("T")


def _error(error: BaseException) -> EnhancerError:
    if isinstance(error, GRPCError):
        return core.error_from_status(error.status.name, error.message or "")
    if isinstance(error, asyncio.TimeoutError):
        return core.error_from_status("DEADLINE_EXCEEDED", "deadline exceeded")
    if isinstance(error, StreamTerminatedError):
        return core.error_from_status("UNAVAILABLE", f"the connection was closed ({error})")
    return core.error_from_status("UNAVAILABLE", str(error) or type(error).__name__)


@functools.cache
def _health_messages() -> tuple[type, type]:
    """grpc.health.v1 request and reply classes, built in a private descriptor pool.

    The standard health messages may already sit in the default pool under another file name (grpcio's
    and grpclib's copies differ), and registering them twice fails; a private pool cannot clash.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="image_enhancer_lite/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=FieldType.TYPE_STRING, label=Label.LABEL_OPTIONAL)
    reply = file.message_type.add(name="HealthCheckResponse")
    reply.field.add(
        name="status",
        number=1,
        type=FieldType.TYPE_ENUM,
        label=Label.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    statuses = reply.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        statuses.value.add(name=name, number=number)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )


class LiteClient:
    """A connection to an Image Enhancer server; methods block and raise `EnhancerError`."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        chunk_size: int = core.DEFAULT_CHUNK,
    ) -> None:
        host, port, path = core.split_address(address)
        context: ssl.SSLContext | None = None
        if tls or root_certificates is not None:
            context = ssl.create_default_context(
                cadata=root_certificates.decode() if root_certificates else None
            )
            context.set_alpn_protocols(["h2"])
        config = Configuration(http2_connection_window_size=_WINDOW, http2_stream_window_size=_WINDOW)
        self._loop = asyncio.new_event_loop()

        async def make_channel() -> Channel:  # grpclib binds the channel to the running loop
            if path is not None:
                return Channel(path=path, ssl=context, config=config)
            return Channel(host, port, ssl=context, config=config)

        self._channel = self._loop.run_until_complete(make_channel())
        self._metadata = core.auth_metadata(token)
        self._chunk_size = chunk_size

    def close(self) -> None:
        self._channel.close()
        # The transport closes its socket on the loop's next turn: give it that turn, or the connection
        # stays open (a relay such as `image-enhancer activate` would see a client still there).
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def __enter__(self) -> LiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run_until_complete(coroutine)
        except _CALL_ERRORS as error:
            raise _error(error) from None

    async def _unary(self, method: str, request: Message, reply_type: type[T], timeout: float | None) -> T:
        async with self._channel.request(
            method,
            Cardinality.UNARY_UNARY,
            type(request),
            reply_type,
            timeout=timeout,
            metadata=self._metadata,
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            if reply is None:
                raise EnhancerError("protocol", f"{method} returned no reply")
            return reply

    def health(self, timeout: float = 5.0) -> str:
        """The server's health status name: "SERVING", "NOT_SERVING", ..."""
        request_type, reply_type = _health_messages()
        request = request_type(service=core.SERVICE_NAME)
        reply = self._run(self._unary(core.HEALTH_METHOD, request, reply_type, timeout))
        return reply_type.ServingStatus.Name(reply.status)

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
        reply = self._run(
            self._unary(core.LIST_MODELS_METHOD, pb.ListModelsRequest(), pb.ListModelsResponse, timeout)
        )
        return [core.model_info(m) for m in reply.models]

    def describe(self, timeout: float = 30.0) -> ServerInfo:
        reply = self._run(
            self._unary(core.DESCRIBE_METHOD, pb.DescribeServerRequest(), pb.ServerDescription, timeout)
        )
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
        """Enhance raw samples (row-major, interleaved, little-endian); returns the result's layout, bytes."""
        options = options or Options(**option_fields)  # type: ignore[arg-type]
        image = ImageInfo(width, height, channels, sample_type, colour_encoding)
        requests = core.enhance_requests(data, image, options, self._chunk_size)
        start = next(requests)  # checks the layout against the data before connecting
        return self._run(self._enhance(start, requests, on_progress, timeout))

    async def _enhance(
        self,
        start: pb.EnhanceRequest,
        chunks: Iterator[pb.EnhanceRequest],
        on_progress: ProgressCallback | None,
        timeout: float | None,
    ) -> tuple[ImageInfo, bytes]:
        async with self._channel.request(
            core.ENHANCE_METHOD,
            Cardinality.STREAM_STREAM,
            pb.EnhanceRequest,
            pb.EnhanceResponse,
            timeout=timeout,
            metadata=self._metadata,
        ) as stream:
            # Upload concurrently with reading replies, so an early rejection (full queue, bad header)
            # ends the call without sending the rest of the image.
            await stream.send_request()
            sender = asyncio.ensure_future(self._send_all(stream, start, chunks))
            assembler = core.ResultAssembler(on_progress)
            try:
                async for response in stream:
                    assembler.feed(response)
            except BaseException:
                with contextlib.suppress(Exception):
                    await stream.cancel()
                raise
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_CALL_ERRORS):
                    await sender
            return assembler.result()

    @staticmethod
    async def _send_all(
        stream: Stream, start: pb.EnhanceRequest, chunks: Iterator[pb.EnhanceRequest]
    ) -> None:
        await stream.send_message(start)
        for chunk in chunks:
            await stream.send_message(chunk)
        await stream.end()
