"""The plug-in's rectangle maths, without GIMP: what to read from a layer, how large the canvas grows and
where the result goes. `placement.py` asks GIMP for the numbers and applies the answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Extra pixels read around a selection at x1, so the model sees context at the selection's edge;
# the layer mask hides them again.
SELECTION_CONTEXT = 16


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A size after scaling, rounded as GIMP's Image > Scale Image and the backend both round it."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def source_area(
    layer_width: int, layer_height: int, selection: Rect | None, scale: float
) -> tuple[Rect, bool]:
    """The part of a layer to enhance (layer coordinates) and whether the result is blended through a
    mask. Only at x1 does a selection narrow it: its bounds within the layer (`selection`, None when there
    is none), grown by SELECTION_CONTEXT on each side as far as the layer reaches. At other scales the
    whole image grows, so the whole layer is enhanced."""
    if scale != 1.0 or selection is None:
        return Rect(0, 0, layer_width, layer_height), False
    x0 = max(0, selection.x - SELECTION_CONTEXT)
    y0 = max(0, selection.y - SELECTION_CONTEXT)
    x1 = min(layer_width, selection.x + selection.width + SELECTION_CONTEXT)
    y1 = min(layer_height, selection.y + selection.height + SELECTION_CONTEXT)
    return Rect(x0, y0, x1 - x0, y1 - y0), True


def gimp_round(value: float) -> int:
    """GIMP's rounding of scaled layer edges: halves go up, below zero too (-7.5 -> -7, 2.5 -> 3)."""
    return math.floor(value + 0.5)


def scaled_offset(offset: int, old_size: int, new_size: int) -> int:
    """Where Image > Scale Image puts a plain layer's edge at `offset` when the canvas side goes from
    `old_size` to `new_size`: GIMP scales by the canvas's factor (not the asked-for scale, which the
    canvas's size was rounded from) and rounds half up."""
    return gimp_round(offset * (new_size / old_size))


def result_offset(
    layer_offset: tuple[int, int], area: Rect, scale: float, canvas: tuple[int, int]
) -> tuple[int, int]:
    """Where the result's top-left corner goes in the (grown) image: where GIMP puts the original layer's
    corner (at `layer_offset` in a canvas of size `canvas` before anything changed) when it scales the
    image, plus the read area's corner in the layer, scaled (only at x1 is that not the layer's corner).
    So the result lies exactly on its scaled original, whose far edges GIMP rounds on their own: at
    fractional scales the two may differ by a pixel in size, never in position."""
    grown = scaled_size(*canvas, scale)
    return (
        scaled_offset(layer_offset[0], canvas[0], grown[0]) + round(area.x * scale),
        scaled_offset(layer_offset[1], canvas[1], grown[1]) + round(area.y * scale),
    )
