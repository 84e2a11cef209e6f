"""Blur kernels for synthetic degradations: Gaussian family (isotropic, anisotropic, generalized,
plateau) and the circular sinc (ringing / overshoot) filter. All are normalised to sum 1.

Every random choice draws from the `torch.Generator` passed in, so a seed reproduces a kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GAUSSIAN_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    """One float drawn uniformly from [low, high] with `gen`."""
    return low + (high - low) * float(torch.rand((), generator=gen))


def _grid(size: int) -> tuple[Tensor, Tensor]:
    half = (size - 1) / 2
    axis = torch.arange(size, dtype=torch.float64) - half
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return xx, yy


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """x^T Σ^{-1} x on a size×size grid for a covariance rotated by theta."""
    cos, sin = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(cov)
    xx, yy = _grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_family_kernel(
    kind: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 1.0
) -> Tensor:
    """A normalised float32 kernel of one of GAUSSIAN_KINDS; `beta` shapes generalized/plateau kernels."""
    if kind not in GAUSSIAN_KINDS:
        raise ValueError(f"unknown blur kernel kind {kind!r}; expected one of {', '.join(GAUSSIAN_KINDS)}")
    if size % 2 == 0 or size < 3:
        raise ValueError(f"kernel size must be odd and at least 3, got {size}")
    if kind.endswith("_iso") or kind == "iso":
        sigma_y, theta = sigma_x, 0.0
    d2 = _mahalanobis(size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        kernel = torch.exp(-0.5 * d2.pow(beta))
    elif kind.startswith("plateau"):
        kernel = 1.0 / (1.0 + d2.pow(beta))
    else:
        kernel = torch.exp(-0.5 * d2)
    return (kernel / kernel.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> Tensor:
    """Circular low-pass (2-D sinc / Airy) kernel with angular cutoff in radians per pixel."""
    if size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    xx, yy = _grid(size)
    r = torch.sqrt(xx * xx + yy * yy)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    # Limit of the expression above at r = 0.
    kernel = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), kernel)
    return (kernel / kernel.sum()).float()


def pad_kernel(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad an odd square kernel to `size` so kernels of one batch can be stacked."""
    pad = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))
