"""What both clients share, independent of the gRPC library: the client API itself, the request stream,
result assembly and errors. A transport supplies only how to connect, one unary call and the streaming
Enhance call (`grpc_client` on grpcio, `lite` on grpclib).

Pure Python on purpose (protobuf messages only; no grpc, no numpy): the pure-Python client that the
GIMP plug-in vendors imports this module on interpreters that cannot load compiled extensions.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto
from google.protobuf.message import Message

from .. import wire
from ..address import Target, parse_target
from ..request import EnhanceOptions
from ..v1 import enhancer_pb2 as pb
from ..wire import ImageInfo, InstallEvent, ModelInfo, ServerInfo, TimeEstimate

T = TypeVar("T")
#: How often a call that can be cancelled from the caller's side asks whether it is (`_unary`).
CANCEL_POLL_S = 0.1


class EnhancerError(Exception):
    """A failed call, with a `kind` a user interface can act on and the server's human message.

    Kinds: "unavailable" (no server at the address), "not_found" (unknown or uninstalled model),
    "invalid" (a request the server rejects), "too_large" (image over the server's limit),
    "queue_full", "cancelled", "deadline", "unauthenticated", "protocol" (a malformed reply),
    "unsupported" (the server is older than what the request needs), "internal" (anything else).
    """

    def __init__(self, kind: str, message: str, code: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


# gRPC status code names (the same in grpcio and grpclib) to error kinds.
_KINDS = {
    "UNAVAILABLE": "unavailable",
    "NOT_FOUND": "not_found",
    "INVALID_ARGUMENT": "invalid",
    "OUT_OF_RANGE": "invalid",
    "FAILED_PRECONDITION": "invalid",
    "CANCELLED": "cancelled",
    "DEADLINE_EXCEEDED": "deadline",
    "UNAUTHENTICATED": "unauthenticated",
    "PERMISSION_DENIED": "unauthenticated",
    "UNIMPLEMENTED": "unsupported",
}


def error_from_status(code_name: str, details: str) -> EnhancerError:
    """Map a gRPC status (by name) and its details to an EnhancerError of the right kind."""
    kind = _KINDS.get(code_name, "internal")
    if code_name == "RESOURCE_EXHAUSTED":
        kind = "queue_full" if "queue" in details.lower() else "too_large"
    message = details or code_name.replace("_", " ").lower()
    if kind == "unavailable":
        message = f"the enhancer server is not reachable ({message})"
    elif kind == "unsupported":
        message = f"the server does not offer this call ({message}): it is older than this client; update it"
    elif kind == "deadline" and details.lower() in ("", "deadline exceeded"):
        # gRPC's own words for the client's deadline; the server's (e.g. an upload that timed out)
        # already say what happened.
        message = f"the server did not finish in time ({message})"
    return EnhancerError(kind, message, code_name)


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # "queued", "loading model", "enhancing", "finishing"
    done: int
    total: int
    queue_position: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressCallback = Callable[[ProgressEvent], None]


def enhance_requests(
    data: bytes | bytearray | memoryview,
    image: ImageInfo,
    options: EnhanceOptions,
    chunk_size: int = wire.DEFAULT_CHUNK,
) -> Iterator[pb.EnhanceRequest]:
    """The request stream: the start message, then the samples in chunks of `chunk_size` bytes.

    The options are checked with the same `validate()` the server runs, so a bad request fails here."""
    if not wire.MIN_CHUNK <= chunk_size <= wire.MAX_CHUNK:
        raise ValueError(f"chunk_size must be 1-4 MiB, got {chunk_size} bytes")
    try:
        options.validate()
        start = pb.EnhanceRequest(
            start=pb.EnhanceStart(image=wire.header_message(image), options=wire.options_message(options))
        )
    except ValueError as error:
        raise EnhancerError("invalid", str(error)) from None
    view = memoryview(data).cast("B")
    if view.nbytes != image.nbytes:
        raise EnhancerError(
            "invalid",
            f"{image.width}x{image.height}x{image.channels} {image.sample_type} needs {image.nbytes} bytes,"
            f" got {view.nbytes}",
        )
    yield start
    for offset in range(0, view.nbytes, chunk_size):
        yield pb.EnhanceRequest(chunk=bytes(view[offset : offset + chunk_size]))


class ResultAssembler:
    """Consumes EnhanceResponse messages: reports progress, then collects the result's chunks."""

    def __init__(self, on_progress: ProgressCallback | None = None) -> None:
        self._on_progress = on_progress
        self.image: ImageInfo | None = None
        self._chunks: list[bytes] = []
        self._received = 0

    def feed(self, response: pb.EnhanceResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "progress":
            if self._on_progress is not None:
                p = response.progress
                self._on_progress(ProgressEvent(p.stage, p.done, p.total, p.queue_position))
        elif kind == "result":
            if self.image is not None:
                raise EnhancerError("protocol", "the server sent two result headers")
            try:
                self.image = wire.image_info(response.result)
            except wire.WireError as error:
                raise EnhancerError("protocol", f"the server sent an {error}") from None
        elif kind == "chunk":
            if self.image is None:
                raise EnhancerError("protocol", "the server sent result bytes before the result header")
            self._received += len(response.chunk)
            if self._received > self.image.nbytes:
                raise EnhancerError(
                    "protocol", f"the server sent more than the {self.image.nbytes} bytes announced"
                )
            self._chunks.append(response.chunk)

    def result(self) -> tuple[ImageInfo, bytes]:
        """The result once the stream has ended; raises if it ended early."""
        if self.image is None:
            raise EnhancerError("protocol", "the server ended the call without a result")
        if self._received != self.image.nbytes:
            raise EnhancerError(
                "protocol", f"the result is truncated: {self._received} of {self.image.nbytes} bytes arrived"
            )
        data = b"".join(self._chunks)
        self._chunks = []
        return self.image, data


def assemble(
    responses: Iterable[pb.EnhanceResponse], on_progress: ProgressCallback | None
) -> tuple[ImageInfo, bytes]:
    assembler = ResultAssembler(on_progress)
    for response in responses:
        assembler.feed(response)
    return assembler.result()


@dataclass(frozen=True)
class EnhanceCall:
    """What a transport needs for one Enhance call: the start message, the chunks that follow it, where
    progress goes and the deadline in seconds (None: none)."""

    start: pb.EnhanceRequest
    chunks: Iterator[pb.EnhanceRequest]
    on_progress: ProgressCallback | None
    timeout: float | None


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@functools.cache
def health_messages() -> tuple[Any, Any]:
    """grpc.health.v1 request and reply classes, built in a private descriptor pool.

    The standard health messages may already sit in the default pool under another file name (grpcio's
    and grpclib's copies differ), and registering them twice fails; a private pool cannot clash.
    """
    field_type, label = FieldDescriptorProto.Type, FieldDescriptorProto.Label
    file = descriptor_pb2.FileDescriptorProto(
        name="image_enhancer_client/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field_type.TYPE_STRING, label=label.LABEL_OPTIONAL)
    reply = file.message_type.add(name="HealthCheckResponse")
    reply.field.add(
        name="status",
        number=1,
        type=field_type.TYPE_ENUM,
        label=label.LABEL_OPTIONAL,
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


class Client(ABC):
    """A connection to an Image Enhancer server; every method raises `EnhancerError`.

        with LiteClient("127.0.0.1:50051", token=None) as client:    # or "unix:/path/to/socket",
                                                    # "dns:///NAME:PORT", "ipv4:A:PORT,B:PORT"
            client.wait_until_serving(timeout=60)
            client.health() -> "SERVING" | "NOT_SERVING" | ...
            client.list_models() -> list[ModelInfo]
            client.catalogue() -> ModelCatalogue    # models and face models, installed or installable
            client.describe() -> ServerInfo
            client.install_model(name, on_progress=callback) -> InstallEvent
            client.estimate_time(width, height, channels, model="", scale=None, ...) -> TimeEstimate
            info, data = client.enhance(data, width, height, channels, "u8" | "u16" | "f32",
                                        model="", scale=None, strength=None, ..., colour_encoding="srgb",
                                        on_progress=callback, timeout=None)

    A transport subclass supplies `_connect`, `close`, `_unary` and `_enhance`.
    """

    def __init__(
        self,
        address: str = wire.DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        chunk_size: int = wire.DEFAULT_CHUNK,
    ) -> None:
        """`address` is one backend (HOST:PORT, unix:PATH) or several behind one gRPC target
        (`dns:///NAME:PORT`, `ipv4:A:PORT,B:PORT`, `ipv6:[A]:PORT,...`; see each transport for how it
        spreads calls). `token` is sent as `authorization: Bearer` metadata; `tls` (implied by
        `root_certificates`, PEM bytes; None trusts the system's roots) encrypts the connection."""
        try:
            target = parse_target(address)
        except wire.AddressError as error:
            raise EnhancerError("invalid", str(error)) from None
        self._metadata = auth_metadata(token)
        self._chunk_size = chunk_size
        self._server_protocol: int | None = None  # DescribeServer's answer, asked when first needed
        self._connect(target, tls or root_certificates is not None, root_certificates)

    @abstractmethod
    def _connect(self, target: Target, tls: bool, root_certificates: bytes | None) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _unary(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        timeout: float | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> T:
        """One request, one reply; failures as EnhancerError. `cancelled` is asked every `CANCEL_POLL_S`
        while the call waits: once true, the call is cancelled (the server drops its work) and
        EnhancerError("cancelled") raised."""

    @abstractmethod
    def _server_stream(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        on_reply: Callable[[T], None],
        timeout: float | None,
    ) -> None:
        """One request, a stream of replies each handed to `on_reply`; the call is cancelled if that
        raises. Failures as EnhancerError."""

    @abstractmethod
    def _enhance(self, call: EnhanceCall) -> tuple[ImageInfo, bytes]:
        """The streaming call: send `call.start` and `call.chunks` while feeding replies to a
        ResultAssembler; cancel the call if anything (on_progress included) raises."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, timeout: float = 5.0) -> str:
        """The server's health status name: "SERVING", "NOT_SERVING", ..."""
        request_type, reply_type = health_messages()
        reply = self._unary(wire.HEALTH_METHOD, request_type(service=wire.SERVICE_NAME), reply_type, timeout)
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
        reply = self._unary(wire.LIST_MODELS_METHOD, pb.ListModelsRequest(), pb.ListModelsResponse, timeout)
        return [wire.model_info(m) for m in reply.models]

    def catalogue(self, timeout: float = 30.0) -> wire.ModelCatalogue:
        """The models and the face models, installed or installable, in one call: what a model chooser
        and its "get more models" list show. A server older than protocol 2 lists no face models."""
        reply = self._unary(wire.LIST_MODELS_METHOD, pb.ListModelsRequest(), pb.ListModelsResponse, timeout)
        return wire.model_catalogue(reply)

    def list_face_models(self, timeout: float = 30.0) -> list[str]:
        """The face models the server's face pass can use, its default first (empty: none installed)."""
        reply = self._unary(wire.LIST_MODELS_METHOD, pb.ListModelsRequest(), pb.ListModelsResponse, timeout)
        return list(reply.face_models)

    def install_model(
        self,
        name: str,
        on_progress: Callable[[InstallEvent], None] | None = None,
        timeout: float | None = None,
    ) -> InstallEvent:
        """Have the server download, verify and install the manifest model `name` (and the other member
        of its pair where it can); every step goes to `on_progress` (raising there cancels the install).
        Returns the last event, whose stage is "installed"."""
        events: list[InstallEvent] = []

        def on_reply(message: pb.InstallProgress) -> None:
            events.append(wire.install_event(message))
            if on_progress is not None:
                on_progress(events[-1])

        request = pb.InstallModelRequest(name=name)
        self._server_stream(wire.INSTALL_MODEL_METHOD, request, pb.InstallProgress, on_reply, timeout)
        if not events or events[-1].stage != "installed":
            raise EnhancerError("protocol", f"the server ended the install of {name} without installing it")
        return events[-1]

    def describe(self, timeout: float = 30.0) -> ServerInfo:
        reply = self._unary(wire.DESCRIBE_METHOD, pb.DescribeServerRequest(), pb.ServerDescription, timeout)
        info = wire.server_info(reply)
        self._server_protocol = info.protocol_version
        return info

    def _protocol(self, timeout: float | None) -> int:
        """The server's protocol version, asked once per client."""
        if self._server_protocol is None:
            self.describe(timeout or 30.0)
        assert self._server_protocol is not None
        return self._server_protocol

    def estimate_time(
        self,
        width: int,
        height: int,
        channels: int = 3,
        sample_type: str = "u8",
        options: EnhanceOptions | None = None,
        *,
        varying_alpha: bool = False,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        **option_fields: Any,
    ) -> TimeEstimate:
        """How long `enhance` would take for an image of this size and these options (as its keywords),
        once the model is loaded; `varying_alpha` when its alpha is not one value throughout. A
        combination the server never measured is timed first (seconds for the slow models, after the
        jobs queued before it). EnhancerError("unsupported") from a server older than protocol 3;
        EnhancerError("cancelled") once `cancelled()` is true while it waits (the server stops timing)."""
        options = options or EnhanceOptions(**option_fields)
        image = ImageInfo(width, height, channels, sample_type)
        try:
            options.validate()
            header, message = wire.header_message(image), wire.options_message(options)
        except ValueError as error:
            raise EnhancerError("invalid", str(error)) from None
        version = self._protocol(timeout)
        if version < wire.ESTIMATE_PROTOCOL_VERSION:
            raise EnhancerError(
                "unsupported", f"this backend (protocol {version}) cannot estimate a job's time: update it"
            )
        request = pb.EstimateTimeRequest(image=header, options=message, varying_alpha=varying_alpha)
        reply = self._unary(wire.ESTIMATE_METHOD, request, pb.TimeEstimate, timeout, cancelled)
        return wire.time_estimate(reply)

    def check_supported(self, options: EnhanceOptions, timeout: float | None = None) -> None:
        """Raise EnhancerError("unsupported") when the server is too old for what `options` ask (faces
        from a protocol 1 server, which would ignore them). Asks DescribeServer once per client, and
        only for a request that needs more than protocol 1; behind a target that names several
        backends, the first that answers speaks for all."""
        if wire.protocol_needed(options) <= 1:
            return
        version = self._protocol(timeout)
        problem = wire.protocol_problem(options, version)
        if problem is not None:
            raise EnhancerError("unsupported", problem)

    def enhance(
        self,
        data: bytes | bytearray | memoryview,
        width: int,
        height: int,
        channels: int,
        sample_type: str = "u8",
        options: EnhanceOptions | None = None,
        *,
        colour_encoding: str = "srgb",
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **option_fields: Any,
    ) -> tuple[ImageInfo, bytes]:
        """Enhance raw samples (row-major, interleaved, little-endian); returns the result's layout and bytes.

        Options come as an `EnhanceOptions` or as its fields by keyword (model, scale, strength, tile,
        colour_fidelity, auto_contrast, alpha_mode, faces, face_strength, face_model, faces_only). If
        `on_progress` raises, the job is cancelled on the server and the exception propagates. A server
        too old for the options (faces) is refused before the upload (`check_supported`).
        """
        options = options or EnhanceOptions(**option_fields)
        image = ImageInfo(width, height, channels, sample_type, colour_encoding)
        requests = enhance_requests(data, image, options, self._chunk_size)
        start = next(requests)  # checks the request and the data's size before connecting
        self.check_supported(options, timeout)
        return self._enhance(EnhanceCall(start, requests, on_progress, timeout))
