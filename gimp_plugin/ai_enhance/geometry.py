"""The plug-in's rectangle maths, without GIMP: what to read from a layer, how large the canvas grows and
where the result goes. `placement.py` asks GIMP for the numbers and applies the answers.
"""

from __future__ import annotations

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


def result_offset(layer_offset: tuple[int, int], area: Rect, scale: float) -> tuple[int, int]:
    """Where the result's top-left corner goes in the (grown) image: the read area's corner in image
    coordinates before anything changed, scaled as GIMP scales the layers under it."""
    return round((layer_offset[0] + area.x) * scale), round((layer_offset[1] + area.y) * scale)
