"""Network interpolation for the strength control: θ = (1−s)·θ_faithful + s·θ_sharp, s the strength.

Blending the weights of a PSNR-oriented network and its GAN fine-tune gives a continuous trade-off
between faithful-but-soft and detailed-but-invented, at the cost of one forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from image_enhancer.models.tensors import as_fp32
from image_enhancer.request import check_strength


class IncompatiblePairError(ValueError):
    """The two state dicts are not the same architecture with the same shapes."""


def check_compatible(psnr: dict[str, Tensor], gan: dict[str, Tensor]) -> None:
    only_psnr = sorted(psnr.keys() - gan.keys())
    only_gan = sorted(gan.keys() - psnr.keys())
    if only_psnr or only_gan:
        raise IncompatiblePairError(
            "cannot interpolate networks with different layers: "
            f"only in the faithful (PSNR) model: {only_psnr[:3]}, "
            f"only in the sharp (GAN) model: {only_gan[:3]}"
        )
    for key, value in psnr.items():
        if value.shape != gan[key].shape:
            raise IncompatiblePairError(
                f"cannot interpolate: {key} has shape {tuple(value.shape)} in the faithful (PSNR) model "
                f"but {tuple(gan[key].shape)} in the sharp (GAN) model"
            )


def interpolate(psnr: dict[str, Tensor], gan: dict[str, Tensor], strength: float) -> dict[str, Tensor]:
    """Blend in fp32. Written as (1−s)·a + s·b rather than a lerp so that s = 0 and s = 1 give the
    endpoints bit for bit (a + s·(b − a) does not round back to b at s = 1)."""
    check_strength(strength)
    check_compatible(psnr, gan)
    # NumPy arithmetic on fp32 copies: one pass per tensor, no per-op thread start-up (see as_fp32).
    return {
        k: torch.from_numpy((1.0 - strength) * as_fp32(psnr[k]).numpy() + strength * as_fp32(gan[k]).numpy())
        for k in psnr
    }
