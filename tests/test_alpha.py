"""Alpha: separate upscaling, no colour bleeding from transparent pixels, constant alpha passes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_enhancer.engine.alpha import (
    constant_value,
    fill_transparent,
    keep_flat_alpha,
    split_alpha,
    upscale_bicubic,
)
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer

MODEL = "realesr-animevideov3"
BLUE = np.array([40, 90, 230])


@pytest.fixture(scope="module")
def enhancer(model_store) -> Enhancer:
    return Enhancer(model_store, device="cpu")


def logo(hidden: str) -> np.ndarray:
    """A 48×48 RGBA logo: an antialiased blue disk on fully transparent pixels of black or noise."""
    yy, xx = np.mgrid[0:48, 0:48] + 0.5
    coverage = np.clip(14.5 - np.hypot(yy - 24, xx - 24), 0, 1)
    if hidden == "black":
        background = np.zeros((48, 48, 3))
    else:
        background = np.random.default_rng(7).integers(0, 256, (48, 48, 3))
    rgb = np.where(coverage[..., None] > 0, BLUE, background).astype(np.uint8)
    return np.dstack([rgb, np.round(coverage * 255).astype(np.uint8)])


def fringe(result: np.ndarray, visible_from: int = 26) -> np.ndarray:
    """Per visible pixel (alpha ≥ 10 %), the largest channel distance from the logo's blue, in levels."""
    visible = result[..., 3] >= visible_from
    return np.abs(result[..., :3].astype(int) - BLUE).max(axis=2)[visible]


@pytest.mark.parametrize("alpha_mode", ["model", "bicubic"])
@pytest.mark.parametrize("hidden", ["black", "noise"])
def test_logo_has_no_dark_or_coloured_fringe(enhancer, alpha_mode, hidden):
    image = logo(hidden)
    result = enhancer.enhance(image, EnhanceOptions(model=MODEL, alpha_mode=alpha_mode))
    assert result.shape == (192, 192, 4) and result.dtype == np.uint8
    distance = fringe(result)
    assert distance.size > 0.9 * np.pi * 56**2  # the disk (radius 14·4) is there and visible
    assert distance.max() <= 8
    # Without the fill, the hidden colour bleeds in: the same measure sees a strong fringe.
    naive = enhancer.enhance(image[..., :3], EnhanceOptions(model=MODEL))
    assert fringe(np.dstack([naive, result[..., 3]])).max() >= 40


@pytest.mark.parametrize("alpha_mode", ["model", "bicubic"])
def test_alpha_is_upscaled_with_its_shape(enhancer, alpha_mode):
    result = enhancer.enhance(logo("black"), EnhanceOptions(model=MODEL, alpha_mode=alpha_mode))
    alpha = result[..., 3].astype(float) / 255
    assert abs(alpha.sum() / 16 - logo("black")[..., 3].sum() / 255) < 0.03 * np.pi * 14.5**2
    assert alpha[96, 96] == 1.0 and alpha[0, 0] == 0.0


def test_constant_alpha_passes_through_and_leaves_colour_alone(enhancer):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((20, 20), 128, np.uint8)])
    result = enhancer.enhance(rgba, EnhanceOptions(model=MODEL))
    assert (result[..., 3] == 128).all()
    np.testing.assert_array_equal(result[..., :3], enhancer.enhance(rgb, EnhanceOptions(model=MODEL)))


def test_fully_transparent_image_stays_transparent(enhancer):
    image = np.zeros((16, 16, 2), np.uint16)
    image[..., 0] = 40000
    result = enhancer.enhance(image, EnhanceOptions(model=MODEL, alpha_mode="bicubic"))
    assert result.dtype == np.uint16 and (result[..., 1] == 0).all()


def test_fill_keeps_visible_colour_and_extends_it():
    colour = torch.zeros(3, 32, 32)
    colour[0] = 1.0  # hidden red garbage everywhere
    alpha = torch.zeros(1, 32, 32)
    alpha[:, 8:16, 8:16] = 0.5
    colour[:, 8:16, 8:16] = torch.tensor([0.1, 0.8, 0.3]).view(3, 1, 1)
    filled = fill_transparent(colour, alpha)
    torch.testing.assert_close(filled[:, 8:16, 8:16], colour[:, 8:16, 8:16])
    # Right next to the visible square, and even far from it, the fill is its green, not the red.
    torch.testing.assert_close(filled[:, 16, 12], torch.tensor([0.1, 0.8, 0.3]), atol=0.02, rtol=0)
    torch.testing.assert_close(filled[:, 31, 31], torch.tensor([0.1, 0.8, 0.3]), atol=0.05, rtol=0)


def test_split_and_constant_helpers():
    gray_alpha = torch.rand(2, 4, 4)
    colour, alpha = split_alpha(gray_alpha)
    assert colour.shape == (1, 4, 4) and alpha.shape == (1, 4, 4)
    assert split_alpha(torch.rand(3, 4, 4))[1] is None
    assert constant_value(torch.full((1, 3, 3), 0.25)) == 0.25
    assert constant_value(gray_alpha[1:]) is None
    assert upscale_bicubic(torch.ones(1, 4, 4), 8, 8).shape == (1, 8, 8)


def test_flat_alpha_keeps_its_exact_value_and_edges_stay_the_networks():
    alpha = torch.zeros(1, 12, 12)
    alpha[:, 4:, 4:] = 1.0
    drifted = torch.nn.functional.interpolate(alpha[None], scale_factor=2, mode="bilinear")[0] * 0.98 + 0.01
    kept = keep_flat_alpha(drifted, alpha, 2)
    assert kept[:, :4, :4].eq(0).all() and kept[:, 12:, 12:].eq(1).all()  # flat areas: exact
    torch.testing.assert_close(kept[:, 8, 6:10], drifted[:, 8, 6:10])  # the edge: the network's


def test_transparent_corners_stay_transparent_with_a_deep_network(model_store):
    result = Enhancer(model_store, device="cpu").enhance(
        logo("black"), EnhanceOptions(model="realesrgan-x4plus-anime", alpha_mode="model")
    )
    assert result[:40, :40, 3].max() == 0 and result[80:112, 80:112, 3].min() == 255
