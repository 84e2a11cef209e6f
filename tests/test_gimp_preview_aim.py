"""Where the dialog's preview looks, without GIMP: the most detailed area of a layer by gradient energy
(gimp_plugin/ai_enhance/detail.py), the preview's window at 1:1 and 2:1 and moving it
(gimp_plugin/ai_enhance/preview.py), and the model list's pure rules (settings.py). The real-GIMP side is
tests/test_gimp_dialog_logic.py."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from image_enhancer.request import EnhanceOptions
from image_enhancer.wire import ModelInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"))
import detail  # noqa: E402
import preview  # noqa: E402
import settings  # noqa: E402
from geometry import Rect  # noqa: E402


def _grid(width: int, height: int, patch: tuple[int, int, int, int] | None, cell: float = 1.0) -> detail.Grid:
    """A flat grey grid with a checkerboard in `patch` (x, y, w, h)."""
    values = [0.5] * (width * height)
    if patch is not None:
        px, py, pw, ph = patch
        for y in range(py, py + ph):
            for x in range(px, px + pw):
                values[y * width + x] = float((x + y) % 2)
    return detail.Grid(values, width, height, cell)


@pytest.mark.parametrize(
    ("size", "patch", "window", "centre"),
    [
        ((40, 30), (2, 3, 6, 6), (6, 6), (5.0, 6.0)),  # top-left patch, window of its size
        ((40, 30), (30, 20, 8, 8), (8, 8), (34.0, 24.0)),  # bottom-right
        ((40, 30), (0, 0, 4, 4), (10, 10), (5.0, 5.0)),  # window larger than the patch: clamped at 0
        ((40, 30), None, (10, 10), (20.0, 15.0)),  # flat: the centre
        ((40, 30), (10, 10, 4, 4), (80, 80), (20.0, 15.0)),  # window larger than the grid: all of it
    ],
)
def test_the_most_detailed_window(size, patch, window, centre) -> None:
    grid = _grid(*size, patch)
    assert detail.most_detailed_centre(grid, *window) == pytest.approx(centre)


def test_cells_map_back_to_layer_pixels() -> None:
    grid = _grid(50, 40, (40, 4, 5, 5), cell=8.0)  # a 400 x 320 layer read at 1/8
    x, y = detail.most_detailed_centre(grid, 40, 40)  # 5 cells
    assert (x, y) == pytest.approx((42.5 * 8, 6.5 * 8))


def test_edges_count_but_texture_counts_more() -> None:
    width, height = 60, 20
    values = [0.0 if x < 10 else 1.0 for y in range(height) for x in range(width)]  # one edge at x=10
    for y in range(5, 15):
        for x in range(40, 50):
            values[y * width + x] = float((x + y) % 2)  # texture at x 40-49
    x, _ = detail.most_detailed_centre(detail.Grid(values, width, height, 1.0), 10, 10)
    assert 40 <= x <= 50


@pytest.mark.parametrize(
    ("values", "width", "height", "window", "corner"),
    [
        ([0, 0, 0, 0, 9, 0, 0, 0, 0], 3, 3, (1, 1), (1, 1)),
        ([5, 0, 0, 0, 0, 0, 0, 0, 5], 3, 3, (1, 1), (0, 0)),  # equal: the one nearest the centre, then top
        ([1, 1, 1, 1], 2, 2, (2, 2), (0, 0)),
        ([1, 2, 3, 4, 5, 6], 6, 1, (2, 1), (4, 0)),
    ],
)
def test_best_window(values, width, height, window, corner) -> None:
    assert detail.best_window(values, width, height, *window) == corner


def test_a_grid_must_hold_its_samples() -> None:
    with pytest.raises(ValueError):
        detail.Grid([0.0] * 5, 2, 3, 1.0)


@pytest.mark.parametrize(
    ("layer", "scale"),
    [((4000, 3000), 256 / 4000), ((100, 80), 1.0), ((300, 900), 256 / 900)],
)
def test_grid_scale(layer, scale) -> None:
    assert detail.grid_scale(*layer) == pytest.approx(scale)


@pytest.mark.parametrize(
    ("scale", "zoom", "side"),
    [(4.0, 1, 96), (4.0, 2, 48), (2.0, 1, 192), (2.0, 2, 96), (1.0, 1, 384), (3.0, 1, 128), (2.5, 1, 154)],
)
def test_the_preview_fills_its_pictures(scale, zoom, side) -> None:
    assert preview.shown_side(scale, zoom) == side
    crop = preview.plan_crop(2000, 2000, 1000, 1000, scale, zoom)
    assert crop.shown_input.width == side and crop.zoom == zoom
    assert crop.shown_output.width * zoom >= preview.PREVIEW_SIDE  # about 384 screen pixels, never less
    assert crop.shown_output.width * zoom < preview.PREVIEW_SIDE + scale * zoom


def test_zoom_is_1_to_1_or_2_to_1() -> None:
    with pytest.raises(ValueError):
        preview.shown_side(4.0, 3)


@pytest.mark.parametrize(
    ("centre", "drag", "moved"),
    [
        ((500, 400), (0, 0), (500, 400)),
        ((500, 400), (40, 0), (490, 400)),  # dragged right by 40 screen px at x4: 10 layer px left
        ((500, 400), (0, -80), (500, 420)),
    ],
)
def test_dragging_moves_the_crop(centre, drag, moved) -> None:
    crop = preview.plan_crop(1000, 800, *centre, 4.0, 1)
    assert crop.moved(*drag) == pytest.approx(moved)
    zoomed = preview.plan_crop(1000, 800, *centre, 4.0, 2)
    dx, dy = moved[0] - centre[0], moved[1] - centre[1]
    assert zoomed.moved(*drag) == pytest.approx((centre[0] + dx / 2, centre[1] + dy / 2))


def test_the_crop_stays_inside_the_layer() -> None:
    crop = preview.plan_crop(1000, 800, 5, 790, 4.0, 1)
    assert crop.shown_input == Rect(0, 800 - 96, 96, 96)
    assert crop.read == Rect(0, 800 - 96 - preview.CONTEXT, 96 + preview.CONTEXT, 96 + preview.CONTEXT)


# --- the model list ---------------------------------------------------------------------------------


def _model(name: str, installed: bool = True, member_of: str = "", **more: object) -> ModelInfo:
    more = {"has_strength": False, **more}
    return ModelInfo(name, "SRVGGNetCompact", 4, installed, pair_member_of=member_of, **more)


MODELS = [
    _model("ie-compact-x4-psnr", member_of="ie-compact-x4-gan"),
    _model("ie-compact-x4-gan", has_strength=True),
    _model("realesrgan-x4plus", installed=False, installable=True, download_bytes=67_040_989,
           license="BSD-3-Clause", description="Photo — best detail"),
    _model("realesrnet-x4plus", installed=False, installable=True, download_bytes=67_040_989,
           member_of="realesrgan-x4plus"),
    _model("realesr-animevideov3", installed=False, installable=True, download_bytes=2_504_012,
           license="BSD-3-Clause", description="Cartoon or anime — fastest"),
    _model("2x-community", description="SPAN ×2 from 2x-community.safetensors"),
]


def test_one_entry_per_pair() -> None:
    assert [m.name for m in settings.model_entries(MODELS)] == ["ie-compact-x4-gan", "2x-community"]


def test_a_member_whose_pair_is_missing_is_listed() -> None:
    alone = [_model("realesrnet-x4plus", member_of="realesrgan-x4plus"), _model("realesrgan-x4plus", False)]
    assert [m.name for m in settings.model_entries(alone)] == ["realesrnet-x4plus"]


def test_the_catalogue_offers_what_is_missing_once_per_pair() -> None:
    offered = settings.catalogue(MODELS)
    assert [m.name for m in offered] == ["realesrgan-x4plus", "realesr-animevideov3"]
    assert settings.catalogue_text(offered[0], MODELS) == (
        "Photo — best detail (with a faithful ↔ sharp Detail control): 134 MB, licence BSD-3-Clause"
    )
    assert settings.catalogue_text(offered[1], MODELS) == (
        "Cartoon or anime — fastest: 2.5 MB, licence BSD-3-Clause"
    )
    assert settings.more_models_hint(MODELS) == "2 more models can be installed: Get more models…"
    assert settings.more_models_hint(MODELS[:2]) == ""


def _face(name: str, installed: bool, description: str, size: int = 0, **more: object) -> ModelInfo:
    """A face model as the backend lists it: a ×1 GFPGAN, installed or installable."""
    more = {"download_bytes": size, "installable": not installed, "license": "Apache-2.0", **more}
    return ModelInfo(name, "GFPGAN", 1, installed, False, description=description, **more)


FACE_MODELS = [
    _face("random-gfpgan", True, "Faces — GFPGAN from random-gfpgan.pth", is_default=True),
    _face("gfpgan-1.4", False, "Faces — natural detail, the default face restorer", 348_632_874),
    _face("restoreformer", False, "Faces — RestoreFormer", 290_785_322),
]


def test_the_catalogue_offers_the_face_models_not_installed_after_the_models() -> None:
    offered = settings.catalogue(MODELS, FACE_MODELS)
    names = [m.name for m in offered]
    assert names == ["realesrgan-x4plus", "realesr-animevideov3", "gfpgan-1.4", "restoreformer"]
    assert settings.catalogue_text(offered[2], MODELS, FACE_MODELS) == (
        "Faces — natural detail, the default face restorer (restores faces; used by Restore faces): "
        "349 MB, licence Apache-2.0"
    )
    assert settings.catalogue_text(offered[0], MODELS, FACE_MODELS).startswith("Photo — best detail (with")
    hint = settings.more_models_hint(MODELS, FACE_MODELS)
    assert hint == "4 more models can be installed: Get more models…"
    assert settings.more_models_hint(MODELS[:2], FACE_MODELS[:1]) == ""


def test_an_installed_face_model_joins_the_face_model_list() -> None:
    assert settings.face_model_names(FACE_MODELS) == ["random-gfpgan"]  # nothing to choose: no list
    installed = [FACE_MODELS[0], replace(FACE_MODELS[1], installed=True, download_bytes=0), FACE_MODELS[2]]
    names = settings.face_model_names(installed)
    assert names == ["random-gfpgan", "gfpgan-1.4"]
    assert [m.name for m in settings.catalogue([], installed)] == ["restoreformer"]  # offered no more
    assert settings.initial_face_model(names, "gfpgan-1.4") == "gfpgan-1.4"  # the one just installed
    assert settings.initial_face_model(names, "restoreformer") == "random-gfpgan"  # not installed
    assert settings.initial_face_model(names, "") == "random-gfpgan"  # the backend's default
    assert settings.initial_face_model([], "gfpgan-1.4") == ""


@pytest.mark.parametrize(
    ("protocol", "faces", "note"),
    [
        (2, FACE_MODELS, ""),
        (2, FACE_MODELS[1:], "no face model yet; Get more models… installs one"),
        (2, [], "Install one with  python install.py --models gfpgan-1.4"),
        (1, [], "too old for face restoration; update it"),  # it would ignore the faces
        (1, FACE_MODELS, "too old for face restoration; update it"),
    ],
)
def test_what_the_dialog_says_when_faces_cannot_be_restored(protocol, faces, note) -> None:
    said = settings.face_model_note(protocol, faces)
    assert note in said if note else said == ""


@pytest.mark.parametrize(
    ("remembered", "suggested", "chosen"),
    [
        ("ie-compact-x4-psnr", "", "ie-compact-x4-gan"),  # a member stands for its pair
        ("", "2x-community", "2x-community"),
        ("realesrgan-x4plus", "", "ie-compact-x4-gan"),  # not installed: the first entry
    ],
)
def test_the_model_the_dialog_opens_with(remembered, suggested, chosen) -> None:
    assert settings.initial_model(MODELS, remembered, suggested) == chosen


@pytest.mark.parametrize(
    ("options", "label"),
    [
        (EnhanceOptions(model="realesr-animevideov3", scale=4.0), "AI x4, realesr-animevideov3"),
        (EnhanceOptions(model="ie-compact-x4-gan", scale=2.0, strength=0.8),
         "AI x2, ie-compact-x4-gan, detail 80 %"),
        (EnhanceOptions(model="m", scale=1.5, strength=0.0), "AI x1.5, m, detail 0 %"),
    ],
)
def test_the_result_layer_says_what_made_it(options, label) -> None:
    assert settings.result_label(options) == label
