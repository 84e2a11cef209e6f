"""What both clients share, independent of the gRPC library: requests, chunking, results and errors.

Pure Python on purpose (protobuf messages only; no grpc, no numpy): the pure-Python client that the
GIMP plug-in vendors imports this module on interpreters that cannot load compiled extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..v1 import enhancer_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
TOKEN_ENV = "IMAGE_ENHANCER_TOKEN"
MIB = 1024 * 1024
MIN_CHUNK = 1 * MIB
MAX_CHUNK = 4 * MIB
DEFAULT_CHUNK = MAX_CHUNK
# Largest message either side accepts: a full chunk plus protobuf framing, with room to spare.
MAX_MESSAGE_BYTES = MAX_CHUNK + 64 * 1024

SAMPLE_TYPES = {"u8": pb.SAMPLE_TYPE_U8, "u16": pb.SAMPLE_TYPE_U16, "f32": pb.SAMPLE_TYPE_F32}
SAMPLE_BYTES = {"u8": 1, "u16": 2, "f32": 4}
COLOUR_ENCODINGS = {"srgb": pb.COLOUR_ENCODING_SRGB, "linear": pb.COLOUR_ENCODING_LINEAR}
ALPHA_MODES = {"model": pb.ALPHA_MODE_MODEL, "bicubic": pb.ALPHA_MODE_BICUBIC}

ENHANCE_METHOD = "/image_enhancer.v1.Enhancer/Enhance"
LIST_MODELS_METHOD = "/image_enhancer.v1.Enhancer/ListModels"
DESCRIBE_METHOD = "/image_enhancer.v1.Enhancer/DescribeServer"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
SERVICE_NAME = "image_enhancer.v1.Enhancer"


class EnhancerError(Exception):
    """A failed call, with a `kind` a user interface can act on and the server's human message.

    Kinds: "unavailable" (no server at the address), "not_found" (unknown or uninstalled model),
    "invalid" (a request the server rejects), "too_large" (image over the server's limit),
    "queue_full", "cancelled", "deadline", "unauthenticated", "protocol" (a malformed reply),
    "internal" (anything else).
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
}


def error_from_status(code_name: str, details: str) -> EnhancerError:
    """Map a gRPC status (by name) and its details to an EnhancerError of the right kind."""
    kind = _KINDS.get(code_name, "internal")
    if code_name == "RESOURCE_EXHAUSTED":
        kind = "queue_full" if "queue" in details.lower() else "too_large"
    message = details or code_name.replace("_", " ").lower()
    if kind == "unavailable":
        message = f"the enhancer server is not reachable ({message})"
    elif kind == "deadline" and details.lower() in ("", "deadline exceeded"):
        # gRPC's own words for the client's deadline; the server's (e.g. an upload that timed out)
        # already say what happened.
        message = f"the server did not finish in time ({message})"
    return EnhancerError(kind, message, code_name)


@dataclass(frozen=True)
class ImageInfo:
    """An image's layout on the wire."""

    width: int
    height: int
    channels: int
    sample_type: str  # "u8" | "u16" | "f32"
    colour_encoding: str = "srgb"  # "srgb" | "linear"

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * SAMPLE_BYTES[self.sample_type]


@dataclass(frozen=True)
class Options:
    """What to do with an image; defaults leave every choice to the server."""

    model: str = ""
    scale: float = 0.0  # 0: the model's own scale
    strength: float | None = None
    tile: int = 0
    colour_fidelity: bool = False
    auto_contrast: float = 0.0
    alpha_mode: str = "model"


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # "queued", "loading model", "enhancing", "finishing"
    done: int
    total: int
    queue_position: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    scale: int
    installed: bool
    has_strength: bool
    precisions: tuple[str, ...] = ()
    license: str = ""
    description: str = ""
    is_default: bool = False
    # Measured on the server's device; a job takes about job_fixed_seconds + pixels / this. 0: not yet run.
    output_pixels_per_second: float = 0.0
    job_fixed_seconds: float = 0.0


@dataclass(frozen=True)
class ServerInfo:
    version: str
    device: str
    device_name: str
    device_memory_bytes: int
    max_queue: int
    max_pixels: int
    default_model: str
    protocol_version: int
    suggested_model: str = ""  # the model to start with on the server's device


ProgressCallback = Callable[[ProgressEvent], None]


def _enum_name(table: dict[str, int], value: str, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        raise EnhancerError("invalid", f"unknown {what} {value!r}; choose from {sorted(table)}") from None


def header_message(image: ImageInfo) -> pb.ImageHeader:
    return pb.ImageHeader(
        width=image.width,
        height=image.height,
        channels=image.channels,
        sample_type=_enum_name(SAMPLE_TYPES, image.sample_type, "sample type"),
        colour_encoding=_enum_name(COLOUR_ENCODINGS, image.colour_encoding, "colour encoding"),
    )


def options_message(options: Options) -> pb.EnhanceOptions:
    message = pb.EnhanceOptions(
        model=options.model,
        scale=options.scale,
        tile=options.tile,
        colour_fidelity=options.colour_fidelity,
        auto_contrast=options.auto_contrast,
        alpha_mode=_enum_name(ALPHA_MODES, options.alpha_mode, "alpha mode"),
    )
    if options.strength is not None:
        message.strength = options.strength
    return message


def enhance_requests(
    data: bytes | bytearray | memoryview, image: ImageInfo, options: Options, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[pb.EnhanceRequest]:
    """The request stream: the start message, then the samples in chunks of `chunk_size` bytes."""
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be 1-4 MiB, got {chunk_size} bytes")
    start = pb.EnhanceRequest(
        start=pb.EnhanceStart(image=header_message(image), options=options_message(options))
    )
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


def image_info(header: pb.ImageHeader) -> ImageInfo:
    sample_types = {v: k for k, v in SAMPLE_TYPES.items()}
    if header.sample_type not in sample_types:
        raise EnhancerError("protocol", f"the server sent an unknown sample type {header.sample_type}")
    encoding = "linear" if header.colour_encoding == pb.COLOUR_ENCODING_LINEAR else "srgb"
    return ImageInfo(header.width, header.height, header.channels, sample_types[header.sample_type], encoding)


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
            self.image = image_info(response.result)
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


def model_info(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=message.name,
        architecture=message.architecture,
        scale=message.scale,
        installed=message.installed,
        has_strength=message.has_strength,
        precisions=tuple(message.precisions),
        license=message.license,
        description=message.description,
        is_default=message.is_default,
        output_pixels_per_second=message.output_pixels_per_second,
        job_fixed_seconds=message.job_fixed_seconds,
    )


def server_info(message: pb.ServerDescription) -> ServerInfo:
    return ServerInfo(
        version=message.version,
        device=message.device,
        device_name=message.device_name,
        device_memory_bytes=message.device_memory_bytes,
        max_queue=message.max_queue,
        max_pixels=message.max_pixels,
        default_model=message.default_model,
        protocol_version=message.protocol_version,
        suggested_model=message.suggested_model,
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def split_address(address: str) -> tuple[str, int | None, str | None]:
    """`host:port`, `[v6]:port` or `unix:PATH` -> (host, port, unix_path)."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if path.startswith("//"):  # unix:///abs/path form
            path = path[2:]
        return "", None, path
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EnhancerError("invalid", f"address {address!r} must be HOST:PORT or unix:PATH")
    return host.strip("[]") or "127.0.0.1", int(port), None
