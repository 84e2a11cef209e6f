"""Artefact measures for damaged inputs: blockiness on the input's JPEG grid, PSNR-Y against another
model's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from image_enhancer_training.degradations import jpeg
from image_enhancer_training.metrics import blockiness, mesh, psnr_y, psnr_y_against

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("tests/data/forest_256.png", "docs/samples/fallen_leaf_320x200.png")


def _photo(path: str) -> torch.Tensor:
    array = np.asarray(Image.open(REPO_ROOT / path).convert("RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255.0


def _upscale(x: torch.Tensor, mode: str, scale: int = 4) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode=mode).clamp(0, 1)


@pytest.mark.parametrize("path", PHOTOS)
def test_a_clean_photo_shows_no_grid_upscaled_by_bicubic_or_nearest(path: str) -> None:
    photo = _photo(path)
    assert blockiness(_upscale(photo, "bicubic"), 4) == pytest.approx(1.0, abs=0.05)
    # Nearest repeats pixels: steps only between input pixels, on the grid lines and off them alike.
    assert blockiness(_upscale(photo, "nearest"), 4) == pytest.approx(1.0, abs=0.05)
    assert blockiness(photo, 1) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("path", PHOTOS)
def test_jpeg_q30_upscaled_by_nearest_shows_its_grid(path: str) -> None:
    compressed = jpeg(_photo(path), [30])
    assert blockiness(_upscale(compressed, "nearest"), 4) > 1.4
    assert blockiness(_upscale(compressed, "bicubic"), 4) > 1.4
    # Better quality, fainter grid.
    assert blockiness(_upscale(jpeg(_photo(path), [90]), "nearest"), 4) < 1.15


def test_the_grid_is_measured_where_the_input_put_it() -> None:
    compressed = _upscale(jpeg(_photo(PHOTOS[0]), [30]), "nearest")
    assert blockiness(compressed, 4, offset=(3, 5)) < 1.0  # the grid falls on lines counted as "other"
    # A crop that starts 3 input pixels into a block: offset says where the grid is.
    cropped = compressed[..., 4 * 5 :, 4 * 3 :]
    assert blockiness(cropped, 4, offset=(3, 5)) == pytest.approx(blockiness(compressed, 4), rel=0.05)


def test_blockiness_of_a_drawn_grid_is_its_contrast() -> None:
    # A grey ramp that steps by 3 across every 8th vertical line and by 1 across the others.
    ramp = torch.tensor([float(2 * (i // 8) + i) for i in range(64)]) / 255.0
    image = (0.2 + ramp.view(1, 1, 1, -1)).expand(1, 3, 64, 64)
    # In Y every step is 219/255 of the RGB one, so the ratio stays 3.
    assert blockiness(image, 1) == pytest.approx(3.0, rel=0.01)
    assert blockiness(_upscale(image, "nearest", 2), 2) == pytest.approx(blockiness(image, 1))


def test_blockiness_refuses_images_too_small_for_the_grid() -> None:
    with pytest.raises(ValueError, match="too small"):
        blockiness(torch.rand(3, 16, 16), 4)
    with pytest.raises(ValueError, match="scale"):
        blockiness(torch.rand(3, 64, 64), 0)


def test_psnr_against_another_output_is_symmetric_and_infinite_for_itself() -> None:
    photo = _photo(PHOTOS[0])
    bicubic, nearest = _upscale(photo, "bicubic"), _upscale(photo, "nearest")
    assert psnr_y_against(bicubic, bicubic) == float("inf")
    assert psnr_y_against(bicubic, nearest, 4) == pytest.approx(psnr_y_against(nearest, bicubic, 4))
    assert psnr_y_against(bicubic, nearest) == psnr_y(bicubic, nearest)
    assert 20 < psnr_y_against(bicubic, nearest) < 40


@pytest.mark.parametrize("path", PHOTOS)
def test_mesh_sees_a_pattern_repeating_every_scale_pixels(path: str) -> None:
    photo = _photo(path)
    bicubic = _upscale(photo, "bicubic")
    assert mesh(bicubic, 4) == pytest.approx(1.0, abs=0.25)
    # A faint sawtooth on the input's pixel grid: rising by 3 levels inside each input pixel's 4×4
    # cell, falling by 9 across the cell's edges.
    ramp = torch.arange(4, dtype=torch.float32) * 3 / 255
    pattern = (ramp.view(4, 1) + ramp.view(1, 4)).expand(1, 3, 4, 4)
    meshed = (bicubic + pattern.repeat(1, 1, bicubic.shape[-2] // 4, bicubic.shape[-1] // 4)).clamp(0, 1)
    assert mesh(meshed, 4) > mesh(bicubic, 4) + 0.5
    assert blockiness(meshed, 4) == pytest.approx(blockiness(bicubic, 4), abs=0.05)  # not a JPEG grid
    # The same pattern shifted off the input's pixel grid: lines inside input pixels, no mesh score.
    assert mesh(meshed[..., 2:, 2:], 4) < mesh(bicubic, 4)
    with pytest.raises(ValueError, match="scale"):
        mesh(bicubic, 1)
