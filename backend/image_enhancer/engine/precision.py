"""Which floating-point precision a network runs in on PyTorch, from the user's choice, the device and
what the model tolerates."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    if dtype is torch.float16 and not descriptor.supports_half:
        # fp16 overflows or misbehaves in such networks (spandrel's finding); bf16 keeps fp32's range.
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and not (descriptor.supports_bf16 and torch.cuda.is_bf16_supported()):
        return torch.float32
    return dtype
