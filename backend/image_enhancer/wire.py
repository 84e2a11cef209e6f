"""The wire's facts in one place, beside the generated code: names of the enums, chunk and message
limits, the image, model and server descriptions both ends use, addresses, and the conversions between
protobuf messages and these types.

Imported by the server, both clients and the GIMP plug-in (which vendors it), so it stays pure Python:
protobuf messages only, no grpc, numpy or torch.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from .address import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from .address import Address as Address
from .address import AddressError as AddressError
from .address import parse_address as parse_address
from .request import DEFAULT_FACE_STRENGTH, EnhanceOptions
from .v1 import enhancer_pb2 as pb

# The wire contract's version, which DescribeServer reports: 1, images, models and the server's
# description; 2, the face pass (EnhanceOptions.faces), InstallModel and ListModels' face models; 3,
# EstimateTime. A server ignores fields newer than itself, so a client checks the version before asking
# for them.
PROTOCOL_VERSION = 3
FACES_PROTOCOL_VERSION = 2  # the first version whose servers restore faces and install models
ESTIMATE_PROTOCOL_VERSION = 3  # the first version whose servers answer EstimateTime
SERVICE_NAME = "image_enhancer.v1.Enhancer"
ENHANCE_METHOD = f"/{SERVICE_NAME}/Enhance"
LIST_MODELS_METHOD = f"/{SERVICE_NAME}/ListModels"
DESCRIBE_METHOD = f"/{SERVICE_NAME}/DescribeServer"
INSTALL_MODEL_METHOD = f"/{SERVICE_NAME}/InstallModel"
ESTIMATE_METHOD = f"/{SERVICE_NAME}/EstimateTime"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
TOKEN_ENV = "IMAGE_ENHANCER_TOKEN"

MIB = 1024 * 1024
# Samples travel in chunks of 1-4 MiB; only the last chunk of an image may be smaller.
MIN_CHUNK = 1 * MIB
MAX_CHUNK = 4 * MIB
DEFAULT_CHUNK = MAX_CHUNK
# Largest message either side accepts: a full chunk plus protobuf framing, with room to spare.
MAX_MESSAGE_BYTES = MAX_CHUNK + 64 * 1024

# Names <-> enum values. Unspecified values read as the protocol's defaults.
SAMPLE_TYPES = {"u8": pb.SAMPLE_TYPE_U8, "u16": pb.SAMPLE_TYPE_U16, "f32": pb.SAMPLE_TYPE_F32}
SAMPLE_BYTES = {"u8": 1, "u16": 2, "f32": 4}
COLOUR_ENCODINGS = {"srgb": pb.COLOUR_ENCODING_SRGB, "linear": pb.COLOUR_ENCODING_LINEAR}
ALPHA_MODES = {"model": pb.ALPHA_MODE_MODEL, "bicubic": pb.ALPHA_MODE_BICUBIC}
_SAMPLE_TYPE_NAMES = {value: name for name, value in SAMPLE_TYPES.items()}
_COLOUR_ENCODING_NAMES = {pb.COLOUR_ENCODING_UNSPECIFIED: "srgb"} | {
    value: name for name, value in COLOUR_ENCODINGS.items()
}
_ALPHA_MODE_NAMES = {pb.ALPHA_MODE_UNSPECIFIED: "model"} | {v: k for k, v in ALPHA_MODES.items()}


T = TypeVar("T")


class WireError(ValueError):
    """A value that has no form on the wire, or a message value the protocol does not define."""


@dataclass(frozen=True)
class ImageInfo:
    """An image's layout on the wire: row-major, interleaved channels, little-endian samples."""

    width: int
    height: int
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    sample_type: str  # "u8" | "u16" | "f32"
    colour_encoding: str = "srgb"  # "srgb" | "linear"

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * SAMPLE_BYTES[self.sample_type]

    @property
    def linear(self) -> bool:
        return self.colour_encoding == "linear"


@dataclass(frozen=True)
class ModelInfo:
    """A model as the store lists it and the server describes it."""

    name: str
    architecture: str
    scale: int
    installed: bool
    has_strength: bool  # a faithful/sharp pair is installed, so `strength` is accepted
    precisions: tuple[str, ...] = ()
    license: str = ""
    description: str = ""
    is_default: bool = False
    # Measured on the server's device; a job takes about job_fixed_seconds + pixels / this. 0: not yet run.
    output_pixels_per_second: float = 0.0
    job_fixed_seconds: float = 0.0
    download_bytes: int = 0  # what installing it downloads; 0 when unknown or installed
    installable: bool = False  # the server can install it (InstallModel)
    pair_member_of: str = ""  # the pair entry that blends this model in; interfaces list only that one


@dataclass(frozen=True)
class ModelCatalogue:
    """What ListModels tells a model chooser: the enhancement models and the face models, each installed
    or installable (the face models installed first, the server's default face model first)."""

    models: tuple[ModelInfo, ...]
    face_models: tuple[ModelInfo, ...] = ()

    @property
    def installed_face_models(self) -> list[str]:
        """The face models the face pass can use now, the server's default first."""
        return [m.name for m in self.face_models if m.installed]


@dataclass(frozen=True)
class InstallEvent:
    """One step of installing a model on the server."""

    model: str
    stage: str  # "waiting", "downloading", "installing", "installed"
    done_bytes: int = 0
    total_bytes: int = 0  # 0: unknown
    message: str = ""

    @property
    def fraction(self) -> float | None:
        return self.done_bytes / self.total_bytes if self.total_bytes else None


@dataclass(frozen=True)
class TimeEstimate:
    """How long a job would take on the server once its model is loaded, and what would run it."""

    seconds: float
    runtime: str  # "ncnn", "openvino", "pytorch"
    precision: str  # "fp32", "fp16", "bf16", "int8"


@dataclass(frozen=True)
class BrokenModel:
    """A file in the models folder that offers no model, and why: listed so that a person can fix it."""

    name: str  # the model name it would offer, escaped like `printable` when it holds control characters
    file: str  # its file name, escaped the same way
    reason: str  # one line


# Characters a model name must not hold: controls (a newline would split a listing), format characters
# (bidirectional overrides can make one name look like another), undecodable bytes (surrogates) and
# line or paragraph separators.
_UNPRINTABLE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a model name, or None when it can."""
    if any(unicodedata.category(c) in _UNPRINTABLE_CATEGORIES for c in name):
        return "its name holds control or invisible characters (shown escaped); rename the file"
    return None


def printable(text: str) -> str:
    """`text` itself when every character shows as itself, else its escaped repr (quotes included), so
    that a name from the disk can never split a line of output or hide as another name."""
    if any(unicodedata.category(c) in _UNPRINTABLE_CATEGORIES for c in text):
        return repr(text)
    return text


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


def protocol_needed(options: EnhanceOptions) -> int:
    """The oldest protocol version whose servers honour everything `options` ask."""
    return FACES_PROTOCOL_VERSION if options.faces else 1


def protocol_problem(options: EnhanceOptions, server_version: int) -> str | None:
    """Why a server speaking `server_version` cannot do what `options` ask, or None when it can. A server
    ignores fields newer than itself: an older one would enhance without restoring the faces asked for.
    Every server speaks version 1 (one that reports 0 is older than the version field)."""
    needed = protocol_needed(options)
    if needed <= 1 or server_version >= needed:
        return None
    return (
        f"this backend is too old for face restoration (it speaks protocol {server_version}; faces "
        f"need {FACES_PROTOCOL_VERSION}): update it, or enhance without restoring faces"
    )


def find_model(models: Sequence[ModelInfo], name: str) -> ModelInfo | None:
    """The listed model `name` stands for; "" stands for the default model."""
    return next((m for m in models if (m.name == name if name else m.is_default)), None)


def _value(table: dict[str, int], name: str, what: str) -> int:
    try:
        return table[name]
    except KeyError:
        raise WireError(f"unknown {what} {name!r}; choose from {sorted(table)}") from None


def _name(table: dict[int, str], value: int, field: str, enum: EnumTypeWrapper) -> str:
    try:
        return table[value]
    except KeyError:
        got = enum.Name(value) if value in enum.values() else value
        what, expected = field.replace("_", " "), sorted(set(table.values()))
        raise WireError(f"unknown {what} ({field} got {got}); expected one of {expected}") from None


def header_message(image: ImageInfo) -> pb.ImageHeader:
    return pb.ImageHeader(
        width=image.width,
        height=image.height,
        channels=image.channels,
        sample_type=_value(SAMPLE_TYPES, image.sample_type, "sample type"),
        colour_encoding=_value(COLOUR_ENCODINGS, image.colour_encoding, "colour encoding"),
    )


def image_info(header: pb.ImageHeader) -> ImageInfo:
    """The header's layout; WireError for a sample type or colour encoding the protocol lacks."""
    return ImageInfo(
        header.width,
        header.height,
        header.channels,
        _name(_SAMPLE_TYPE_NAMES, header.sample_type, "sample_type", pb.SampleType),
        _name(_COLOUR_ENCODING_NAMES, header.colour_encoding, "colour_encoding", pb.ColourEncoding),
    )


def options_message(options: EnhanceOptions) -> pb.EnhanceOptions:
    message = pb.EnhanceOptions(
        model=options.model,
        scale=options.scale or 0.0,  # 0 on the wire: the model's own scale
        tile=options.tile,
        colour_fidelity=options.colour_fidelity,
        auto_contrast=options.auto_contrast,
        alpha_mode=_value(ALPHA_MODES, options.alpha_mode, "alpha mode"),
    )
    if options.strength is not None:
        message.strength = options.strength
    if options.faces:
        message.faces.model = options.face_model
        message.faces.strength = options.face_strength
        message.faces.only = options.faces_only
    return message


def request_options(message: pb.EnhanceOptions, image: ImageInfo) -> EnhanceOptions:
    """The request's options for an image of that layout (not yet validated)."""
    return EnhanceOptions(
        model=message.model,
        scale=message.scale or None,
        strength=message.strength if message.HasField("strength") else None,
        tile=message.tile,
        alpha_mode=_name(_ALPHA_MODE_NAMES, message.alpha_mode, "alpha_mode", pb.AlphaMode),
        colour_fidelity=message.colour_fidelity,
        auto_contrast=message.auto_contrast,
        linear=image.linear,
        **_face_fields(message),
    )


def _face_fields(message: pb.EnhanceOptions) -> dict[str, object]:
    if not message.HasField("faces"):
        return {}
    faces = message.faces
    strength = faces.strength if faces.HasField("strength") else DEFAULT_FACE_STRENGTH
    return {"faces": True, "face_strength": strength, "face_model": faces.model, "faces_only": faces.only}


def _fields(message: Message, kind: type[T]) -> T:
    """A dataclass from the message fields of the same names (repeated fields become tuples)."""
    described = message.DESCRIPTOR.fields_by_name
    values = {f.name: getattr(message, f.name) for f in fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: tuple(v) if described[k].is_repeated else v for k, v in values.items()})


def model_message(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(**asdict(info))


def model_info(message: pb.ModelInfo) -> ModelInfo:
    return _fields(message, ModelInfo)


def model_catalogue(message: pb.ListModelsResponse) -> ModelCatalogue:
    return ModelCatalogue(
        tuple(model_info(m) for m in message.models),
        tuple(model_info(m) for m in message.face_model_details),
    )


def broken_model_message(broken: BrokenModel) -> pb.BrokenModel:
    return pb.BrokenModel(**asdict(broken))


def broken_model(message: pb.BrokenModel) -> BrokenModel:
    return _fields(message, BrokenModel)


def install_event_message(event: InstallEvent) -> pb.InstallProgress:
    return pb.InstallProgress(**asdict(event))


def install_event(message: pb.InstallProgress) -> InstallEvent:
    return _fields(message, InstallEvent)


def time_estimate_message(estimate: TimeEstimate) -> pb.TimeEstimate:
    return pb.TimeEstimate(**asdict(estimate))


def time_estimate(message: pb.TimeEstimate) -> TimeEstimate:
    return _fields(message, TimeEstimate)


def server_info(message: pb.ServerDescription) -> ServerInfo:
    return _fields(message, ServerInfo)
