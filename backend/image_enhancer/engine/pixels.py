"""Conversions between the wire/file forms of an image and the backend's one representation.

Outside the backend an image is a numpy array ``H×W×C`` (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) of
``uint8``, ``uint16`` or ``float32`` samples, or the same samples as raw little-endian bytes. Inside it
is a ``torch.float32`` tensor ``(C, H, W)`` of the image's encoded values (sRGB-encoded, or the encoding of
the image's own colour space when it has a profile: nothing here converts between colour spaces), in
``[0, 1]`` for integer samples. Float samples may lie outside ``[0, 1]`` (wide-gamut or high-dynamic-range
values); ``split_range`` separates that part so the engine can carry it past the network. This module is
the only place that converts between the two, so rounding and clamping happen exactly once each way.
"""

from __future__ import annotations

import numpy as np
import torch

#: Sample types on the wire and in files, by the names the server and CLI use.
SAMPLE_DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype("<u1"),
    "u16": np.dtype("<u2"),
    "f32": np.dtype("<f4"),
}
#: Largest sample value of each integer type; float samples already live in [0, 1].
_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

# ITU-R BT.709 luma weights, used to fold an RGB model's output back to one gray channel.
_LUMA = (0.2126, 0.7152, 0.0722)


class PixelFormatError(ValueError):
    """The samples do not describe an image the engine can process."""


def sample_type_of(pixels: np.ndarray) -> str:
    """The wire name ("u8", "u16" or "f32") of an array's sample type; PixelFormatError otherwise."""
    for name, dtype in SAMPLE_DTYPES.items():
        if pixels.dtype == dtype or pixels.dtype == dtype.newbyteorder("="):
            return name
    raise PixelFormatError(f"unsupported sample type {pixels.dtype}; expected uint8, uint16 or float32")


def check_image(pixels: np.ndarray) -> None:
    """Raise PixelFormatError unless ``pixels`` is an ``H×W×C`` (or ``H×W``) image array we support."""
    if not isinstance(pixels, np.ndarray):
        raise PixelFormatError(f"expected a numpy array, got {type(pixels).__name__}")
    sample_type_of(pixels)
    if pixels.ndim not in (2, 3):
        raise PixelFormatError(f"expected an H×W×C image array, got {pixels.ndim} dimensions")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels not in (1, 2, 3, 4):
        raise PixelFormatError(
            f"expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got {channels}"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise PixelFormatError(f"the image is empty ({pixels.shape[1]}×{pixels.shape[0]} pixels)")


def from_bytes(
    data: bytes | bytearray | memoryview, width: int, height: int, channels: int, sample_type: str
) -> np.ndarray:
    """Interpret raw samples (row-major, interleaved channels, little-endian) as an ``H×W×C`` array.

    The array is a read-only view of ``data`` when possible (no copy). Raises PixelFormatError when the
    description is invalid or the byte count does not match it.
    """
    if sample_type not in SAMPLE_DTYPES:
        raise PixelFormatError(
            f"unknown sample type {sample_type!r}; expected one of {sorted(SAMPLE_DTYPES)}"
        )
    if channels not in (1, 2, 3, 4):
        raise PixelFormatError(f"channels must be 1, 2, 3 or 4, got {channels}")
    if width <= 0 or height <= 0:
        raise PixelFormatError(f"width and height must be positive, got {width}×{height}")
    dtype = SAMPLE_DTYPES[sample_type]
    expected = width * height * channels * dtype.itemsize
    if len(data) != expected:
        raise PixelFormatError(
            f"a {width}×{height} image with {channels} {sample_type} channels needs {expected} bytes, "
            f"got {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(height, width, channels)
    # Work in native byte order from here on (a no-op on little-endian machines).
    return array.astype(dtype.newbyteorder("="), copy=False)


def to_bytes(pixels: np.ndarray) -> bytes:
    """Raw samples of an ``H×W×C`` array: row-major, interleaved channels, little-endian."""
    dtype = SAMPLE_DTYPES[sample_type_of(pixels)]
    return np.ascontiguousarray(pixels, dtype=dtype).tobytes()


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``H×W×C`` (or ``H×W``) uint8/uint16/float32 array → float32 ``(C, H, W)`` tensor.

    Integer samples are divided by their type's maximum, so they land in ``[0, 1]``. Float samples keep
    their values, also outside ``[0, 1]``; only NaN becomes 0 and ±infinity 1 and 0, so that every later
    step works on finite numbers.
    """
    check_image(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    maximum = _INT_MAX.get(pixels.dtype)
    if maximum is not None:
        # Widened, made channels-first and scaled in one pass by NumPy (torch has no arithmetic for
        # uint16): a 1024² 8-bit picture in 2 ms instead of 2–3 ms in three passes, the same values.
        planes = np.empty((pixels.shape[2], *pixels.shape[:2]), np.float32)
        np.multiply(pixels.transpose(2, 0, 1), np.float32(1.0 / maximum), out=planes)
        return torch.from_numpy(planes)
    tensor = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1).contiguous()
    return tensor.nan_to_num_(nan=0.0, posinf=1.0, neginf=0.0)


def split_range(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tensor`` → (its values clamped to ``[0, 1]``, the rest: ``tensor`` minus that part), the rest being
    None when every value already lies in ``[0, 1]``. The models take the first; the second is what a float
    image holds beyond their range."""
    inside = tensor.clamp(0.0, 1.0)
    if bool(torch.equal(inside, tensor)):
        return tensor, None
    return inside, tensor - inside


def from_tensor(tensor: torch.Tensor, dtype: np.dtype | type, scratch: bool = False) -> np.ndarray:
    """float32 ``(C, H, W)`` tensor → ``H×W×C`` array of ``dtype`` (uint8, uint16 or float32).

    Integer types are clamped to ``[0, 1]`` and rounded to the nearest step, so 16-bit results keep their
    full precision. Float results keep their values as they are, also outside ``[0, 1]``: what the range is
    for float is the caller's decision (the engine clamps what the network made and nothing else).
    ``scratch``: the tensor may be overwritten, which saves a float copy of it (a band of a ×4 result).
    """
    dtype = np.dtype(dtype)
    if dtype.newbyteorder("=") not in {d.newbyteorder("=") for d in SAMPLE_DTYPES.values()}:
        raise PixelFormatError(f"unsupported sample type {dtype}; expected uint8, uint16 or float32")
    if tensor.ndim != 3:
        raise PixelFormatError(f"expected a (C, H, W) tensor, got shape {tuple(tensor.shape)}")
    values = tensor.detach().to("cpu", torch.float32)
    maximum = _INT_MAX.get(dtype.newbyteorder("="))
    if maximum is None:
        # One pass from the channels-first floats to the interleaved result, without a float copy between.
        return values.permute(1, 2, 0).numpy().astype(dtype.newbyteorder("="), order="C")
    values = (values.clamp_(0.0, 1.0) if scratch else values.clamp(0.0, 1.0)).mul_(maximum).round_()
    # PyTorch converts and interleaves in one pass too, about a fifth faster than NumPy's astype.
    integer = torch.uint8 if maximum == 255 else torch.uint16
    return values.permute(1, 2, 0).to(integer, memory_format=torch.contiguous_format).numpy()


def srgb_to_linear(values: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding curve (IEC 61966-2-1); below 0 its linear part continues, above 1 its power law
    (as babl extends it), so values outside ``[0, 1]`` round-trip."""
    return torch.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055).clamp(min=0) ** 2.4)


def linear_to_srgb(values: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding curve (IEC 61966-2-1), extended beyond ``[0, 1]`` as ``srgb_to_linear`` is."""
    return torch.where(values <= 0.0031308, values * 12.92, 1.055 * values.clamp(min=0) ** (1 / 2.4) - 0.055)


def gray_to_rgb(gray: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` → ``(3, H, W)``, so an RGB model can process a gray image."""
    return gray.expand(3, *gray.shape[1:]).contiguous()


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` → ``(1, H, W)`` by BT.709 luma; exact for an RGB image whose channels are equal."""
    weights = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return (rgb * weights).sum(dim=0, keepdim=True)
