"""Which floating-point precision a network runs in on PyTorch or on a CPU runtime, from the user's
choice, the device and what the model tolerates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from image_enhancer.engine.choices import PRECISIONS

if TYPE_CHECKING:
    import torch

    from image_enhancer.models.descriptor import ModelDescriptor


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")


def resolve_precision(name: str, device: torch.device, descriptor: ModelDescriptor) -> torch.dtype:
    """The compute dtype. ``auto`` is fp16 on CUDA (bf16 if the model is not fp16-safe) and fp32 elsewhere;
    fp16 asked of a model that is not fp16-safe gives bf16 where model and GPU allow it, and any reduced
    precision the device or model cannot honour falls back to fp32."""
    import torch

    check_precision(name)
    if device.type != "cuda":
        # CPU fp16/bf16 convolutions are slower than fp32 on most CPUs, and MPS lacks some bf16 kernels.
        return torch.float32
    if name == "auto":
        if descriptor.supports_half:
            return torch.float16
        if descriptor.supports_bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _tolerated(name, descriptor, bf16_available=torch.cuda.is_bf16_supported())


def cpu_precision(name: str, descriptor: ModelDescriptor) -> torch.dtype:
    """The compute dtype on a CPU runtime that honours reduced precision (OpenVINO): fp32 unless asked
    otherwise, because a CPU's bf16 (AVX-512 BF16, AMX) ran x4plus about 4× faster but up to 8 levels
    off (0.5 on average; the compact model under 2)."""
    check_precision(name)
    return _tolerated(name, descriptor, bf16_available=True)


def _tolerated(name: str, descriptor: ModelDescriptor, bf16_available: bool) -> torch.dtype:
    """The dtype asked for (fp32 for ``auto``), as far as the model and the device tolerate it."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name, torch.float32)
    if dtype is torch.float16 and not descriptor.supports_half:
        # fp16 overflows or misbehaves in such networks (spandrel's finding); bf16 keeps fp32's range.
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and not (descriptor.supports_bf16 and bf16_available):
        return torch.float32
    return dtype


@dataclass(frozen=True)
class Bound:
    """How far a reduced precision (bf16, fp16, int8) may stray from fp32 on a real photo for ``auto``
    to use it: on average half an 8-bit level (invisible), and 40 dB PSNR against the fp32 result (its
    largest differences stay rare: a few pixels at strong edges)."""

    mean_levels: float = 0.5
    min_psnr_db: float = 40.0


BOUND = Bound()


@dataclass(frozen=True)
class Difference:
    """A result's difference from the fp32 result of the same network, in 8-bit levels."""

    mean_levels: float
    max_levels: float
    psnr_db: float

    @classmethod
    def between(cls, result: np.ndarray, reference: np.ndarray) -> Difference:
        """Both in ``[0, 1]`` floats (clipped first, as the engine clips its results)."""
        difference = np.abs(np.clip(result, 0.0, 1.0) - np.clip(reference, 0.0, 1.0))
        mse = float(np.mean(difference.astype(np.float64) ** 2))
        return cls(
            mean_levels=float(difference.mean() * 255),
            max_levels=float(difference.max() * 255),
            psnr_db=float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        )

    def within(self, bound: Bound = BOUND) -> bool:
        return self.mean_levels <= bound.mean_levels and self.psnr_db >= bound.min_psnr_db
