"""Resampling to any scale, colour fidelity and automatic contrast, asserted with numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_enhancer.engine import colour, pixels
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer

DATA = Path(__file__).parent / "data"
MODEL = "realesr-animevideov3"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.asarray(Image.open(DATA / "cups_192.png").convert("RGB"))[40:88, 60:108]


@pytest.fixture(scope="module")
def enhancer(model_store) -> Enhancer:
    return Enhancer(model_store, device="cpu")


def low_frequency_colour_error(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean absolute difference of the two images' blurred colours, at the reference's size."""
    small = colour.resize(image, *reference.shape[-2:])
    return float((colour.gaussian_blur(small, 2.0) - colour.gaussian_blur(reference, 2.0)).abs().mean())


def detail(image: torch.Tensor) -> float:
    """Energy of what a blur of 4 pixels removes: the fine detail."""
    return float((image - colour.gaussian_blur(image, 4.0)).abs().mean())


def test_resize_shrinks_without_aliasing():
    checkerboard = (torch.arange(64).view(1, 64) + torch.arange(64).view(64, 1)) % 2
    small = colour.resize(checkerboard.float().expand(3, 64, 64), 24, 24)
    assert small.shape == (3, 24, 24)
    assert float((small - 0.5).abs().max()) < 0.05  # the pattern averages out instead of aliasing


def test_resize_to_the_same_size_is_identity():
    image = torch.rand(3, 5, 7)
    assert colour.resize(image, 5, 7) is image


def test_colour_fidelity_undoes_a_colour_shift_and_keeps_detail(enhancer, crop):
    reference = pixels.to_tensor(crop)
    output = pixels.to_tensor(enhancer.enhance(crop, EnhanceOptions(model=MODEL)))
    # A colour cast and a brightness drift, the kind of shift users see from some upscalers.
    ramp = torch.linspace(-0.06, 0.06, output.shape[-1]).view(1, 1, -1)
    shifted = (output * torch.tensor([1.12, 1.0, 0.85]).view(3, 1, 1) + ramp).clamp(0, 1)
    corrected = colour.match_colour(shifted, reference)
    before = low_frequency_colour_error(shifted, reference)
    after = low_frequency_colour_error(corrected, reference)
    assert after < before / 10
    assert abs(detail(corrected) / detail(shifted) - 1) < 0.1


def test_colour_fidelity_option_pulls_the_result_towards_the_input(enhancer, crop):
    reference = pixels.to_tensor(crop)
    plain = pixels.to_tensor(enhancer.enhance(crop, EnhanceOptions(model=MODEL)))
    faithful = pixels.to_tensor(enhancer.enhance(crop, EnhanceOptions(model=MODEL, colour_fidelity=True)))
    assert low_frequency_colour_error(faithful, reference) < 0.3 * low_frequency_colour_error(
        plain, reference
    )
    assert abs(detail(faithful) / detail(plain) - 1) < 0.1


def test_colour_fidelity_works_on_gray():
    reference = torch.full((1, 8, 8), 0.5)
    corrected = colour.match_colour(torch.full((1, 32, 32), 0.4), reference)
    torch.testing.assert_close(corrected, torch.full((1, 32, 32), 0.5))


def luma_spread(image: np.ndarray) -> float:
    luma = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float(np.percentile(luma, 99) - np.percentile(luma, 1))


def test_auto_contrast_widens_a_flat_histogram(enhancer, crop):
    flat = (crop.astype(np.float64) * 0.4 + 80).astype(np.uint8)
    plain = enhancer.enhance(flat, EnhanceOptions(model=MODEL))
    stretched = enhancer.enhance(flat, EnhanceOptions(model=MODEL, auto_contrast=1.0))
    half = enhancer.enhance(flat, EnhanceOptions(model=MODEL, auto_contrast=0.5))
    assert luma_spread(stretched) > 1.8 * luma_spread(plain)
    assert luma_spread(plain) < luma_spread(half) < luma_spread(stretched)


def test_auto_contrast_keeps_hue_and_adds_mild_saturation():
    image = torch.tensor([0.3, 0.4, 0.5]).view(3, 1, 1) * torch.linspace(0.5, 1, 50).view(1, 1, 50)
    levels = colour.measure_levels(image)
    result = colour.apply_levels(image, levels, 1.0)
    before, after = image[:, 0, 25], result[:, 0, 25]
    assert after[0] < after[1] < after[2]  # same channel order: the hue is kept
    assert (after[2] - after[0]) > (before[2] - before[0])  # and the colour is a bit stronger


def test_auto_contrast_strength_zero_is_identity_and_limits_hold():
    image = torch.rand(3, 16, 16) * 0.1 + 0.45
    levels = colour.measure_levels(image)
    assert colour.apply_levels(image, levels, 0.0) is image
    assert levels.white - levels.black >= 1 / 2.5 - 1e-6  # gain never above 2.5
    dark = torch.rand(1, 16, 16) * 0.2
    assert colour.measure_levels(dark).white >= 0.75  # a dark picture is not pushed to white


def test_float_values_outside_zero_to_one_pass_the_network_unchanged(enhancer, crop):
    """The part of a float image beyond [0, 1] (a highlight at 2.0, a wide-gamut colour with a negative
    component) skips the network: it is resized like the picture and added back, never clamped."""
    image = crop.astype(np.float32) / 255
    image[8:24, 8:24] = 2.0  # a highlight twice as bright as white
    image[28:44, 20:36] = (0.9, -0.2, 0.1)  # a red beyond the primaries of the image's space
    inside = np.clip(image, 0.0, 1.0)
    beyond = pixels.to_tensor(image - inside)
    for scale in (1.0, 2.0):
        result = enhancer.enhance(image, EnhanceOptions(model=MODEL, scale=scale))
        height, width = result.shape[:2]
        network = enhancer.enhance(inside, EnhanceOptions(model=MODEL, scale=scale))
        expected = network + colour.resize(beyond, height, width, clamp=False).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(result, expected, atol=1e-6)
        s = int(scale)
        highlight = result[(8 + 4) * s : (24 - 4) * s, (8 + 4) * s : (24 - 4) * s]
        wide_red = result[(28 + 4) * s : (44 - 4) * s, (20 + 4) * s : (36 - 4) * s]
        assert abs(float(highlight.mean()) - 2.0) < 0.02
        np.testing.assert_allclose(wide_red.reshape(-1, 3).mean(0), (0.9, -0.2, 0.1), atol=0.02)


def test_linear_floats_beyond_one_round_trip(enhancer):
    """Linear-light floats go through the extended sRGB curve and back: a flat 3.0 comes back about 3.0
    (the network alone moves a flat colour by a level or two)."""
    flat = np.full((24, 24, 3), 3.0, dtype=np.float32)
    flat[:, :, 1] = -0.01
    result = enhancer.enhance(flat, EnhanceOptions(model=MODEL, scale=2.0, linear=True))
    assert result.shape == (48, 48, 3)
    inner = result[8:-8, 8:-8].reshape(-1, 3)  # the network's own border effects stay out of this
    np.testing.assert_allclose(inner, np.broadcast_to(flat[0, 0], inner.shape), rtol=0.05, atol=1e-3)


def test_colour_options_keep_a_wide_gamut_image_in_its_own_space(enhancer):
    """Keep colours and auto contrast work on the encoded values of the image's own space: its primaries
    stay primaries and its greys stay grey, whatever the space (nothing assumes sRGB's gamut)."""
    import wide_gamut

    image, corners = wide_gamut.patch_image()
    samples = np.round(image * 65535).astype(np.uint16)
    options = EnhanceOptions(model=MODEL, scale=2.0, colour_fidelity=True, auto_contrast=1.0)
    result = enhancer.enhance(samples, options).astype(np.float64) / 65535
    means = wide_gamut.patch_means(result, corners, 2)
    for name in ("red", "green", "blue"):
        expected = np.array(wide_gamut.PATCHES[name])
        np.testing.assert_allclose(means[name], expected, atol=0.01, err_msg=name)
    for name in ("dark-grey", "mid-grey", "light-grey"):
        assert np.ptp(means[name]) < 0.002, (name, means[name])  # neutral stays neutral
