"""The dialog's preview, without GIMP or GTK: which crop to enhance, running one preview job at a time.

The preview enhances a crop of the first layer (where the person aims it; at first the selection's
centre, else the layer's most detailed area, see detail.py) that fills PREVIEW_SIDE screen pixels: at 1:1
each output pixel is one screen pixel, at 2:1 a block of 2 x 2, so a quarter of the area shows twice as
large. It runs in the layer's own precision and alpha and with the dialog's options, exactly as the real
run would. The crop is read with CONTEXT extra pixels on every side so the model sees what surrounds it,
as it does in the whole layer; only the inner part is shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import transport
from geometry import Rect, scaled_size
from newest import Superseded

from image_enhancer.client.core import EnhancerError
from image_enhancer.client.lite import LiteClient
from image_enhancer.request import EnhanceOptions
from image_enhancer.wire import SAMPLE_BYTES, ImageInfo

PREVIEW_SIDE = 384  # screen pixels on each side of the before and the after pictures
ZOOMS = (1, 2)  # screen pixels per output pixel: 1:1 and 2:1
CONTEXT = 24  # input pixels read around the crop (more than the compact models' reach)


@dataclass(frozen=True)
class Crop:
    """A preview crop: what is read from the layer, and what of the backend's result is shown."""

    read: Rect  # layer coordinates, with context
    shown_input: Rect  # layer coordinates: the part a person sees ("before")
    shown_output: Rect  # coordinates in the enhanced `read` rectangle ("after")
    scale: float
    zoom: int = 1  # screen pixels per output pixel

    @property
    def centre(self) -> tuple[float, float]:
        """The shown part's centre in layer coordinates."""
        shown = self.shown_input
        return shown.x + shown.width / 2, shown.y + shown.height / 2

    def moved(self, screen_dx: float, screen_dy: float) -> tuple[float, float]:
        """The centre after dragging the picture by that many screen pixels (the content follows)."""
        step = self.scale * self.zoom
        x, y = self.centre
        return x - screen_dx / step, y - screen_dy / step


def shown_side(scale: float, zoom: int = 1) -> int:
    """Layer pixels on each side of a crop that fills the preview at `scale` and `zoom`."""
    if zoom not in ZOOMS:
        raise ValueError(f"zoom must be one of {ZOOMS}, got {zoom}")
    return max(1, math.ceil(PREVIEW_SIDE / (scale * zoom)))


def plan_crop(
    layer_width: int, layer_height: int, centre_x: float, centre_y: float, scale: float, zoom: int = 1
) -> Crop:
    """The crop around (centre_x, centre_y) in layer coordinates, clamped into the layer."""
    side = shown_side(scale, zoom)
    width, height = min(side, layer_width), min(side, layer_height)
    x = min(max(0, round(centre_x - width / 2)), layer_width - width)
    y = min(max(0, round(centre_y - height / 2)), layer_height - height)
    read_x, read_y = max(0, x - CONTEXT), max(0, y - CONTEXT)
    read = Rect(
        read_x,
        read_y,
        min(layer_width, x + width + CONTEXT) - read_x,
        min(layer_height, y + height + CONTEXT) - read_y,
    )
    shown_output = Rect(
        round((x - read_x) * scale), round((y - read_y) * scale), *scaled_size(width, height, scale)
    )
    return Crop(read, Rect(x, y, width, height), shown_output, scale, zoom)


def cut(data: bytes, image: ImageInfo, rect: Rect) -> tuple[ImageInfo, bytes]:
    """The part of `rect` inside `image`, cut out of interleaved samples laid out as `image`."""
    width, height = min(rect.width, image.width - rect.x), min(rect.height, image.height - rect.y)
    pixel = image.channels * SAMPLE_BYTES[image.sample_type]
    row = image.width * pixel
    view = memoryview(data)
    starts = ((rect.y + r) * row + rect.x * pixel for r in range(height))
    part = b"".join(view[start : start + width * pixel] for start in starts)
    return ImageInfo(width, height, image.channels, image.sample_type), part


@dataclass(frozen=True)
class PreviewJob:
    data: bytes  # the crop's `read` rectangle in the layer's format
    image: ImageInfo
    options: EnhanceOptions
    crop: Crop


@dataclass(frozen=True)
class PreviewResult:
    job: PreviewJob
    image: ImageInfo  # of the shown part
    data: bytes  # the shown part of the enhanced crop, in the layer's format


def run_preview(address: str, job: PreviewJob, cancelled: Callable[[], bool]) -> PreviewResult:
    """Enhance the crop through the backend at `address`; raises Superseded once `cancelled()`."""

    def report(text: str, fraction: float | None) -> None:
        if cancelled():
            raise Superseded  # raised inside the call's progress: the client cancels the stream

    try:
        client = LiteClient(address)
    except EnhancerError as error:
        raise transport.BackendError(transport.explain(error)) from None
    try:
        got, data = transport.enhance(client, job.data, job.image, job.options, report)
    finally:
        client.close()
    return PreviewResult(job, *cut(data, got, job.crop.shown_output))
