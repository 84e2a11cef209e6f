"""The plug-in's rectangle maths (gimp_plugin/ai_enhance/geometry.py) without GIMP: the area read from a
layer (the selection's bounds plus context at x1), the grown canvas and where the result lands."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

PLUGIN = Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"
_spec = importlib.util.spec_from_file_location("ai_enhance_geometry", PLUGIN / "geometry.py")
geometry = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = geometry  # dataclasses look their module up there
_spec.loader.exec_module(geometry)
Rect = geometry.Rect
CONTEXT = geometry.SELECTION_CONTEXT
assert CONTEXT == 16  # the cases below spell it out


@pytest.mark.parametrize(
    ("layer", "selection", "scale", "area", "masked"),
    [
        ((640, 480), None, 1.0, Rect(0, 0, 640, 480), False),  # no selection: the whole layer
        ((640, 480), Rect(100, 50, 20, 10), 2.0, Rect(0, 0, 640, 480), False),  # the image grows: all of it
        ((640, 480), Rect(100, 50, 20, 10), 4.0, Rect(0, 0, 640, 480), False),
        ((640, 480), Rect(100, 50, 20, 10), 1.0, Rect(84, 34, 52, 42), True),  # 16 px of context all round
        ((640, 480), Rect(0, 0, 20, 10), 1.0, Rect(0, 0, 36, 26), True),  # clipped at the top-left
        ((640, 480), Rect(630, 475, 10, 5), 1.0, Rect(614, 459, 26, 21), True),  # clipped at the bottom-right
        ((640, 480), Rect(0, 0, 640, 480), 1.0, Rect(0, 0, 640, 480), True),  # all selected: still masked
        ((8, 8), Rect(3, 3, 1, 1), 1.0, Rect(0, 0, 8, 8), True),  # context larger than the layer
    ],
)
def test_source_area(layer, selection, scale, area, masked):
    assert geometry.source_area(*layer, selection, scale) == (area, masked)


@given(
    layer=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    corner=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    size=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_the_area_holds_the_selection_and_stays_inside_the_layer(layer, corner, size):
    x, y = int(corner[0] * (layer[0] - 1)), int(corner[1] * (layer[1] - 1))
    width, height = max(1, int(size[0] * (layer[0] - x))), max(1, int(size[1] * (layer[1] - y)))
    area, masked = geometry.source_area(*layer, Rect(x, y, width, height), 1.0)
    assert masked
    assert 0 <= area.x <= x and 0 <= area.y <= y
    assert x + width <= area.x + area.width <= layer[0] and y + height <= area.y + area.height <= layer[1]
    assert x - area.x == min(x, CONTEXT) and y - area.y == min(y, CONTEXT)  # context wherever it fits


@pytest.mark.parametrize(
    ("size", "scale", "grown"),
    [
        ((640, 480), 1.0, (640, 480)),
        ((640, 480), 4.0, (2560, 1920)),
        ((3, 3), 1.5, (4, 4)),  # 4.5 rounds to the even 4, as Python rounds
        ((5, 5), 1.5, (8, 8)),  # 7.5 rounds to 8
        ((333, 201), 2.5, (832, 502)),
        ((1, 1), 1.2, (1, 1)),  # never below one pixel
    ],
)
def test_canvas_growth(size, scale, grown):
    assert geometry.scaled_size(*size, scale) == grown


@pytest.mark.parametrize(
    ("layer_offset", "area", "scale", "canvas", "offset"),
    [
        ((0, 0), Rect(0, 0, 10, 10), 4.0, (10, 10), (0, 0)),
        (
            (10, 20),
            Rect(0, 0, 10, 10),
            2.0,
            (64, 64),
            (20, 40),
        ),  # the layer's own offset scales with the canvas
        (
            (10, 20),
            Rect(5, 7, 1, 1),
            1.0,
            (64, 64),
            (15, 27),
        ),  # x1 selection: the read area's corner, unscaled
        ((-8, -3), Rect(0, 0, 4, 4), 2.5, (10, 10), (-20, -7)),  # left of or above the canvas; -7.5 -> -7
        ((3, 1), Rect(0, 0, 4, 4), 2.5, (10, 10), (8, 3)),  # 7.5 -> 8 and 2.5 -> 3: GIMP rounds halves up
        ((-5, -3), Rect(0, 0, 21, 17), 1.5, (64, 64), (-7, -4)),  # as GIMP 3.0 and 3.2 placed such a layer
        # GIMP scales by the canvas's factor, 832/333 here, not by 2.5: 100 * 2.4985 = 249.85 -> 250, and
        # 201 rounds to 502 (so 2.4975): 1 * 2.4975 -> 2
        ((100, 1), Rect(0, 0, 4, 4), 2.5, (333, 201), (250, 2)),
        ((5, 0), Rect(0, 0, 4, 4), 150 / 64, (64, 64), (12, 0)),  # 11.72 -> 12
        ((-5, -3), Rect(0, 0, 4, 4), 150 / 64, (64, 64), (-12, -7)),  # -11.72 -> -12, -7.03 -> -7
    ],
)
def test_result_offset_lies_where_gimp_scales_the_original(layer_offset, area, scale, canvas, offset):
    assert geometry.result_offset(layer_offset, area, scale, canvas) == offset


@pytest.mark.parametrize(
    ("value", "rounded"), [(2.5, 3), (7.5, 8), (-7.5, -7), (-4.5, -4), (-11.2, -11), (0.49, 0)]
)
def test_gimp_round_takes_halves_up(value, rounded):
    assert geometry.gimp_round(value) == rounded
