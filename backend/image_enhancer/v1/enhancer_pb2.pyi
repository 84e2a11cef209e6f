from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_TYPE_UNSPECIFIED: _ClassVar[SampleType]
    SAMPLE_TYPE_U8: _ClassVar[SampleType]
    SAMPLE_TYPE_U16: _ClassVar[SampleType]
    SAMPLE_TYPE_F32: _ClassVar[SampleType]

class ColourEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOUR_ENCODING_UNSPECIFIED: _ClassVar[ColourEncoding]
    COLOUR_ENCODING_SRGB: _ClassVar[ColourEncoding]
    COLOUR_ENCODING_LINEAR: _ClassVar[ColourEncoding]

class AlphaMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALPHA_MODE_UNSPECIFIED: _ClassVar[AlphaMode]
    ALPHA_MODE_MODEL: _ClassVar[AlphaMode]
    ALPHA_MODE_BICUBIC: _ClassVar[AlphaMode]
SAMPLE_TYPE_UNSPECIFIED: SampleType
SAMPLE_TYPE_U8: SampleType
SAMPLE_TYPE_U16: SampleType
SAMPLE_TYPE_F32: SampleType
COLOUR_ENCODING_UNSPECIFIED: ColourEncoding
COLOUR_ENCODING_SRGB: ColourEncoding
COLOUR_ENCODING_LINEAR: ColourEncoding
ALPHA_MODE_UNSPECIFIED: AlphaMode
ALPHA_MODE_MODEL: AlphaMode
ALPHA_MODE_BICUBIC: AlphaMode

class ImageHeader(_message.Message):
    __slots__ = ("width", "height", "channels", "sample_type", "colour_encoding")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    COLOUR_ENCODING_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    channels: int
    sample_type: SampleType
    colour_encoding: ColourEncoding
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., sample_type: _Optional[_Union[SampleType, str]] = ..., colour_encoding: _Optional[_Union[ColourEncoding, str]] = ...) -> None: ...

class EnhanceOptions(_message.Message):
    __slots__ = ("model", "scale", "strength", "tile", "colour_fidelity", "auto_contrast", "alpha_mode", "faces")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    COLOUR_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONTRAST_FIELD_NUMBER: _ClassVar[int]
    ALPHA_MODE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    model: str
    scale: float
    strength: float
    tile: int
    colour_fidelity: bool
    auto_contrast: float
    alpha_mode: AlphaMode
    faces: FaceRestoration
    def __init__(self, model: _Optional[str] = ..., scale: _Optional[float] = ..., strength: _Optional[float] = ..., tile: _Optional[int] = ..., colour_fidelity: _Optional[bool] = ..., auto_contrast: _Optional[float] = ..., alpha_mode: _Optional[_Union[AlphaMode, str]] = ..., faces: _Optional[_Union[FaceRestoration, _Mapping]] = ...) -> None: ...

class FaceRestoration(_message.Message):
    __slots__ = ("strength", "model", "only")
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    strength: float
    model: str
    only: bool
    def __init__(self, strength: _Optional[float] = ..., model: _Optional[str] = ..., only: _Optional[bool] = ...) -> None: ...

class EnhanceStart(_message.Message):
    __slots__ = ("image", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: ImageHeader
    options: EnhanceOptions
    def __init__(self, image: _Optional[_Union[ImageHeader, _Mapping]] = ..., options: _Optional[_Union[EnhanceOptions, _Mapping]] = ...) -> None: ...

class EnhanceRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: EnhanceStart
    chunk: bytes
    def __init__(self, start: _Optional[_Union[EnhanceStart, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total", "queue_position")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    queue_position: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., queue_position: _Optional[int] = ...) -> None: ...

class EnhanceResponse(_message.Message):
    __slots__ = ("progress", "result", "chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: ImageHeader
    chunk: bytes
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[ImageHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "scale", "installed", "has_strength", "precisions", "license", "description", "is_default", "output_pixels_per_second", "job_fixed_seconds", "download_bytes", "installable", "pair_member_of")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    HAS_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PIXELS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIXED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    INSTALLABLE_FIELD_NUMBER: _ClassVar[int]
    PAIR_MEMBER_OF_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    scale: int
    installed: bool
    has_strength: bool
    precisions: _containers.RepeatedScalarFieldContainer[str]
    license: str
    description: str
    is_default: bool
    output_pixels_per_second: float
    job_fixed_seconds: float
    download_bytes: int
    installable: bool
    pair_member_of: str
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., scale: _Optional[int] = ..., installed: _Optional[bool] = ..., has_strength: _Optional[bool] = ..., precisions: _Optional[_Iterable[str]] = ..., license: _Optional[str] = ..., description: _Optional[str] = ..., is_default: _Optional[bool] = ..., output_pixels_per_second: _Optional[float] = ..., job_fixed_seconds: _Optional[float] = ..., download_bytes: _Optional[int] = ..., installable: _Optional[bool] = ..., pair_member_of: _Optional[str] = ...) -> None: ...

class BrokenModel(_message.Message):
    __slots__ = ("name", "file", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    file: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., file: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "broken_models", "face_models", "face_model_details")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BROKEN_MODELS_FIELD_NUMBER: _ClassVar[int]
    FACE_MODELS_FIELD_NUMBER: _ClassVar[int]
    FACE_MODEL_DETAILS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    broken_models: _containers.RepeatedCompositeFieldContainer[BrokenModel]
    face_models: _containers.RepeatedScalarFieldContainer[str]
    face_model_details: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., broken_models: _Optional[_Iterable[_Union[BrokenModel, _Mapping]]] = ..., face_models: _Optional[_Iterable[str]] = ..., face_model_details: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DescribeServerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerDescription(_message.Message):
    __slots__ = ("version", "device", "device_name", "device_memory_bytes", "max_queue", "max_pixels", "default_model", "protocol_version", "suggested_model")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    version: str
    device: str
    device_name: str
    device_memory_bytes: int
    max_queue: int
    max_pixels: int
    default_model: str
    protocol_version: int
    suggested_model: str
    def __init__(self, version: _Optional[str] = ..., device: _Optional[str] = ..., device_name: _Optional[str] = ..., device_memory_bytes: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_pixels: _Optional[int] = ..., default_model: _Optional[str] = ..., protocol_version: _Optional[int] = ..., suggested_model: _Optional[str] = ...) -> None: ...

class InstallModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InstallProgress(_message.Message):
    __slots__ = ("model", "stage", "done_bytes", "total_bytes", "message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    stage: str
    done_bytes: int
    total_bytes: int
    message: str
    def __init__(self, model: _Optional[str] = ..., stage: _Optional[str] = ..., done_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EstimateTimeRequest(_message.Message):
    __slots__ = ("image", "options", "varying_alpha")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VARYING_ALPHA_FIELD_NUMBER: _ClassVar[int]
    image: ImageHeader
    options: EnhanceOptions
    varying_alpha: bool
    def __init__(self, image: _Optional[_Union[ImageHeader, _Mapping]] = ..., options: _Optional[_Union[EnhanceOptions, _Mapping]] = ..., varying_alpha: _Optional[bool] = ...) -> None: ...

class TimeEstimate(_message.Message):
    __slots__ = ("seconds", "runtime", "precision")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    runtime: str
    precision: str
    def __init__(self, seconds: _Optional[float] = ..., runtime: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...
