"""Where a layer's pixels come from and where the enhanced result goes in the image, applied with GIMP
(the rectangle maths itself is in `geometry.py`).

Nothing here touches pixel values: GIMP itself blends (layer masks) and resamples (image scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gi

gi.require_version("Gimp", "3.0")
from geometry import Rect, result_offset, scaled_offset, scaled_size, source_area  # noqa: E402
from gi.repository import Gimp  # noqa: E402
from layer_io import PixelFormat, layer_type, write_pixels  # noqa: E402


class PlacementError(ValueError):
    """The selected drawables cannot be enhanced as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class Source:
    """One layer to enhance: the rectangle to read (layer coordinates) and where the layer sat."""

    layer: Gimp.Layer
    x: int
    y: int
    width: int
    height: int
    offset_x: int  # the layer's offsets in the image before anything changed
    offset_y: int
    masked: bool  # x1 with a selection: the result is blended through a mask made from the selection
    canvas: tuple[int, int]  # the image's size before anything changed


def check_drawables(drawables: list[Gimp.Drawable]) -> list[Gimp.Layer]:
    """The selected layers, or a PlacementError a person can act on."""
    if not drawables:
        raise PlacementError("Select a layer to enhance.")
    layers = []
    for drawable in drawables:
        if drawable.is_group_layer():
            raise PlacementError(
                f'"{drawable.get_name()}" is a layer group. AI Enhance works on pixel layers: select the '
                "layers inside the group, or merge the group first."
            )
        if not drawable.is_layer():
            raise PlacementError(
                f'"{drawable.get_name()}" is a mask or channel. Select the layer itself to enhance it.'
            )
        layers.append(drawable)
    return layers


def plan_source(layer: Gimp.Layer, scale: float) -> Source:
    """What to read from `layer`: at x1 the selection's bounds (plus context), otherwise the whole layer."""
    _, offset_x, offset_y = layer.get_offsets()
    selection = None
    if scale == 1.0 and not Gimp.Selection.is_empty(layer.get_image()):
        touches, x, y, width, height = layer.mask_intersect()
        if not touches:
            raise PlacementError(f'The selection does not touch the layer "{layer.get_name()}".')
        selection = Rect(x, y, width, height)
    area, masked = source_area(layer.get_width(), layer.get_height(), selection, scale)
    image = layer.get_image()
    canvas = (image.get_width(), image.get_height())
    return Source(layer, area.x, area.y, area.width, area.height, offset_x, offset_y, masked, canvas)


def _placed_layers(items: list[Gimp.Item]) -> Iterator[Gimp.Layer]:
    """The layers whose place is their offsets, in groups too: not groups (their children's bounds)
    nor GIMP 3.2's vector layers (drawn around their path, which GIMP scales)."""
    vector = getattr(Gimp, "VectorLayer", None)
    for item in items:
        if item.is_group_layer():
            yield from _placed_layers(item.get_children())
        elif not (vector and isinstance(item, vector)):
            yield item


def enlarge_image(image: Gimp.Image, scale: float) -> None:
    """Scale the canvas and every layer, channel and path with GIMP's own interpolation, and keep every
    layer where GIMP puts a plain layer: GIMP 3.2 misplaces link layers when it scales an image (an offset
    of 7 goes to 21 at x2, not 14), and with them the other layers of their group."""
    old_width, old_height = image.get_width(), image.get_height()
    width, height = scaled_size(old_width, old_height, scale)
    before = [(layer, *layer.get_offsets()[1:]) for layer in _placed_layers(image.get_layers())]
    if not image.scale(width, height):
        raise PlacementError(f"GIMP could not scale the image to {width}x{height}.")
    for layer, x, y in before:
        wanted = (scaled_offset(x, old_width, width), scaled_offset(y, old_height, height))
        if tuple(layer.get_offsets()[1:]) != wanted and not layer.get_lock_position():
            layer.set_offsets(*wanted)


def add_result_layer(
    image: Gimp.Image,
    source: Source,
    scale: float,
    fmt: PixelFormat,
    width: int,
    height: int,
    data: bytes,
    label: str,
) -> Gimp.Layer:
    """A new layer holding the result, right above the original, aligned with it, named after the
    original and `label` (what made it: settings.result_label)."""
    original = source.layer
    layer = Gimp.Layer.new(
        image,
        f"{original.get_name()} ({label})",
        width,
        height,
        layer_type(fmt),
        original.get_opacity(),
        original.get_mode(),
    )
    image.insert_layer(layer, original.get_parent(), image.get_item_position(original))
    area = Rect(source.x, source.y, source.width, source.height)
    layer.set_offsets(*result_offset((source.offset_x, source.offset_y), area, scale, source.canvas))
    write_pixels(layer, width, height, fmt, data)
    if source.masked:
        # A mask from the selection blends the result in by the selection's (soft) values.
        layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        layer.set_edit_mask(False)  # GIMP makes a new mask the active drawable: the next run wants the layer
    return layer
