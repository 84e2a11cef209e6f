"""Moving a layer's pixels between GIMP and raw bytes, in the image's own precision and colour space.

GEGL does every conversion: the plug-in only names a babl format and hands bytes through, so no
pixel ever passes through a Python loop. The format carries the layer's own colour space (its
profile's primaries and tone curve), so an Adobe RGB or ProPhoto layer travels as its own values:
nothing is converted through sRGB or clipped to it on the way out or back.
"""

from __future__ import annotations

from dataclasses import dataclass

import gi

gi.require_version("Babl", "0.1")
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Babl, Gegl, Gimp  # noqa: E402

# Image precision -> (babl component type, wire sample type). 32-bit integer, half and double
# images travel as float: float keeps every value of those and is what the wire carries.
_SAMPLE_TYPES = {
    "U8": ("u8", "u8"),
    "U16": ("u16", "u16"),
    "U32": ("float", "f32"),
    "HALF": ("float", "f32"),
    "FLOAT": ("float", "f32"),
    "DOUBLE": ("float", "f32"),
}
# Image precision's tone curve -> the babl encoding the model sees. Non-linear and perceptual layers
# go as they are stored (R'G'B': the profile's curve; R~G~B~: the sRGB curve), so the round trip is
# exact. Linear-light layers (a linear precision, or a profile whose curve is linear) go as R~G~B~:
# the sRGB curve over the profile's own primaries. That is the curve the models were trained on, it
# is defined whatever the profile's curve is (with a linear-curve profile, R'G'B' would still be
# linear light), and babl extends it below 0 and above 1 where a gamma curve cuts negative values to
# 0. Their samples travel as float, so nothing the model did not touch is rounded or clamped.
_ENCODINGS = {"linear": "~", "non-linear": "'", "perceptual": "~"}
ALPHA_PROBE_SIDE = 512  # pixels a side read to tell whether a layer's alpha varies


@dataclass(frozen=True)
class PixelFormat:
    """How a drawable's pixels travel: the babl format GEGL converts to and its wire description."""

    babl: str  # a babl format name, e.g. "R'G'B'A u16" or "R'G'B'A u16-space-…" for a profile's space
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    sample_type: str  # "u8" | "u16" | "f32"


def pixel_format(drawable: Gimp.Drawable) -> PixelFormat:
    """The format that keeps the drawable's precision, colour model, colour space and alpha."""
    image = drawable.get_image()
    precision = image.get_precision().value_nick  # e.g. "u16-non-linear", "float-linear"
    component_name, curve = precision.split("-", 1)
    component, sample_type = _SAMPLE_TYPES[component_name.upper()]
    if curve == "non-linear" and image.get_effective_color_profile().is_linear():
        curve = "linear"  # stored through the profile's curve, which is linear: linear light all the same
    encoding = _ENCODINGS[curve]
    if curve == "linear":
        component, sample_type = "float", "f32"  # integer linear light would lose steps when re-encoded
    gray = drawable.is_gray()
    alpha = drawable.has_alpha()
    model = (f"Y{encoding}" if gray else f"R{encoding}G{encoding}B{encoding}") + ("A" if alpha else "")
    # Formats are passed to GEGL by name; the name exists once babl has made the format with the space.
    spaced = Babl.format_with_space(f"{model} {component}", drawable.get_format())
    return PixelFormat(Babl.get_name(spaced), (1 if gray else 3) + (1 if alpha else 0), sample_type)


def alpha_varies(drawable: Gimp.Drawable) -> bool:
    """Whether the drawable's alpha takes more than one value: the backend's model then makes the alpha
    in a second pass. Read at most ALPHA_PROBE_SIDE pixels a side (GEGL averages the rest in), from the
    whole drawable whatever is selected, as the job will read it."""
    if not drawable.has_alpha():
        return False
    width, height = drawable.get_width(), drawable.get_height()
    scale = min(1.0, ALPHA_PROBE_SIDE / max(width, height))
    rect = Gegl.Rectangle.new(0, 0, max(1, int(width * scale)), max(1, int(height * scale)))
    alpha = bytes(drawable.get_buffer().get(rect, scale, "A u8", Gegl.AbyssPolicy.CLAMP))
    return min(alpha) != max(alpha)


def layer_type(fmt: PixelFormat) -> Gimp.ImageType:
    """The Gimp.ImageType of a new layer holding pixels of `fmt`."""
    return {
        1: Gimp.ImageType.GRAY_IMAGE,
        2: Gimp.ImageType.GRAYA_IMAGE,
        3: Gimp.ImageType.RGB_IMAGE,
        4: Gimp.ImageType.RGBA_IMAGE,
    }[fmt.channels]


def read_pixels(drawable: Gimp.Drawable, x: int, y: int, width: int, height: int, fmt: PixelFormat) -> bytes:
    """The drawable's pixels in a rectangle (drawable coordinates), row-major and interleaved."""
    buffer = drawable.get_buffer()
    rect = Gegl.Rectangle.new(x, y, width, height)
    return bytes(buffer.get(rect, 1.0, fmt.babl, Gegl.AbyssPolicy.CLAMP))


def write_pixels(drawable: Gimp.Drawable, width: int, height: int, fmt: PixelFormat, data: bytes) -> None:
    """Replace the drawable's pixels (of size width x height) with `data` in `fmt`."""
    buffer = drawable.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), fmt.babl, data)
    buffer.flush()
    drawable.update(0, 0, width, height)
