"""Degradations and blur kernels: shapes, ranges, reproducibility from a seed, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from image_enhancer_training.degradations import (
    DegradationConfig,
    Degrader,
    StageParams,
    bicubic_downscale,
    filter2d,
    jpeg,
)
from image_enhancer_training.kernels import GAUSSIAN_KINDS, gaussian_family_kernel, sinc_kernel

REPO_ROOT = Path(__file__).resolve().parents[1]


def _photo_batch() -> torch.Tensor:
    """Four 64×64 crops of a real photo (the forest test image)."""
    image = np.asarray(Image.open(REPO_ROOT / "tests/data/forest_256.png").convert("RGB"))
    t = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
    return torch.stack([t[:, y : y + 64, x : x + 64] for y, x in ((0, 0), (64, 64), (128, 0), (192, 192))])


@pytest.mark.parametrize("kind", GAUSSIAN_KINDS)
def test_gaussian_family_kernels_are_normalised_and_point_symmetric(kind: str) -> None:
    k = gaussian_family_kernel(kind, 15, 2.5, 0.8, 0.6, beta=1.5)
    assert k.shape == (15, 15)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5)
    assert (k >= 0).all()
    torch.testing.assert_close(k, torch.rot90(k, 2))  # what lets filter2d use FFT convolution
    assert int(k.argmax()) == 7 * 15 + 7  # peak in the centre


def test_anisotropic_kernel_is_elongated_and_isotropic_is_not() -> None:
    aniso = gaussian_family_kernel("aniso", 21, 3.0, 0.5, 0.0)
    iso = gaussian_family_kernel("iso", 21, 3.0, 0.5, 0.0)
    assert float(aniso[10, :].sum()) > 3 * float(aniso[:, 10].sum())  # wide along x at theta = 0
    torch.testing.assert_close(iso, iso.T)


def test_sinc_kernel_rings_with_negative_lobes() -> None:
    k = sinc_kernel(21, math.pi / 3)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(k.min()) < 0  # the ringing that the final sinc filter adds


def test_kernel_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="odd"):
        gaussian_family_kernel("iso", 8, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown blur kernel"):
        gaussian_family_kernel("box", 7, 1.0, 1.0, 0.0)


def test_fft_filter_matches_direct_convolution() -> None:
    x = torch.rand(2, 3, 40, 36)
    kernels = torch.stack(
        [
            gaussian_family_kernel("aniso", 9, 2.0, 0.7, 0.5),
            gaussian_family_kernel("plateau_iso", 9, 1.0, 1.0, 0, 1.5),
        ]
    )
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect").reshape(1, 6, 48, 44)
    direct = F.conv2d(padded, kernels.repeat_interleave(3, 0)[:, None], groups=6).reshape(2, 3, 40, 36)
    torch.testing.assert_close(filter2d(x, kernels), direct, atol=1e-5, rtol=0)


def test_second_order_degradation_keeps_shape_range_and_8_bit_steps() -> None:
    hr = _photo_batch()
    lq = Degrader(DegradationConfig(), scale=4, seed=3)(hr)
    assert lq.shape == (4, 3, 16, 16)
    assert lq.dtype == torch.float32
    assert float(lq.min()) >= 0.0 and float(lq.max()) <= 1.0
    torch.testing.assert_close(lq * 255, (lq * 255).round(), atol=1e-4, rtol=0)
    # Real damage: far from the clean bicubic downscale.
    assert float((lq - bicubic_downscale(hr, 4)).abs().mean()) > 0.01


def test_degradation_is_reproducible_from_a_seed() -> None:
    hr = _photo_batch()
    a = Degrader(DegradationConfig(), scale=2, seed=11)(hr)
    b = Degrader(DegradationConfig(), scale=2, seed=11)(hr)
    c = Degrader(DegradationConfig(), scale=2, seed=12)(hr)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    degrader = Degrader(DegradationConfig(), scale=2, seed=0)
    degrader.reseed(11)
    torch.testing.assert_close(degrader(hr), a, atol=0, rtol=0)


def test_clean_prob_one_is_plain_bicubic() -> None:
    hr = _photo_batch()
    lq = Degrader(DegradationConfig(clean_prob=1.0), scale=4, seed=0)(hr)
    torch.testing.assert_close(lq, bicubic_downscale(hr, 4), atol=0, rtol=0)


def test_noise_only_config_adds_noise_of_the_asked_strength() -> None:
    hr = torch.full((2, 3, 64, 64), 0.5)
    quiet = StageParams(
        blur_prob=0.0,
        resize_probs=(0.0, 0.0, 1.0),
        gaussian_noise_prob=1.0,
        gray_noise_prob=1.0,
        noise_sigma=(20.0, 20.0),
        jpeg_quality=(100, 100),
    )
    config = DegradationConfig(second_order_prob=0.0, final_sinc_prob=0.0, first=quiet, second=quiet)
    lq = Degrader(config, scale=1, seed=0)(hr)
    assert float(lq.std() * 255) == pytest.approx(20.0, rel=0.15)


def test_jpeg_round_trip_compresses() -> None:
    x = _photo_batch()
    out = jpeg(x, [10, 95, 10, 95])
    assert out.shape == x.shape
    err = (out - x).abs().mean(dim=(1, 2, 3))
    assert float(err[0]) > float(err[1])  # quality 10 loses more than quality 95


@pytest.mark.parametrize(
    ("shape", "message"), [((3, 64, 64), "batch of RGB"), ((1, 3, 62, 64), "not a multiple of the scale")]
)
def test_bad_input_is_refused(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Degrader(DegradationConfig(), scale=4, seed=0)(torch.rand(shape))


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        Degrader(DegradationConfig(first=StageParams(kernel_probs={"box": 1.0})), scale=4)
    with pytest.raises(ValueError, match="clean_prob"):
        Degrader(DegradationConfig(clean_prob=1.5), scale=4)
