"""Moving a layer's pixels between GIMP and raw bytes, in the image's own precision.

GEGL does every conversion: the plug-in only names a babl format and hands bytes through, so no
pixel ever passes through a Python loop. Primed formats (`R'G'B'A`) are sRGB-encoded, which is
what the models expect, whatever the image's own (linear or perceptual) storage is.
"""

from __future__ import annotations

from dataclasses import dataclass

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

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


@dataclass(frozen=True)
class PixelFormat:
    """How a drawable's pixels travel: the babl format GEGL converts to and its wire description."""

    babl: str  # e.g. "R'G'B'A u16"
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    sample_type: str  # "u8" | "u16" | "f32"


def pixel_format(drawable: Gimp.Drawable) -> PixelFormat:
    """The format that keeps the drawable's precision, colour model and alpha."""
    precision = drawable.get_image().get_precision().value_nick  # e.g. "u16-non-linear"
    component, sample_type = _SAMPLE_TYPES[precision.split("-")[0].upper()]
    gray = drawable.is_gray()
    alpha = drawable.has_alpha()
    model = ("Y'" if gray else "R'G'B'") + ("A" if alpha else "")
    channels = (1 if gray else 3) + (1 if alpha else 0)
    return PixelFormat(f"{model} {component}", channels, sample_type)


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
