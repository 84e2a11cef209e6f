"""The PyTorch runtime: CUDA (also how ROCm builds show AMD GPUs), Intel XPU, Apple MPS and the CPU.
It runs every architecture, so it is the reference the others are measured against and the fallback
for graphs they cannot take."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from image_enhancer.engine.precision import check_precision, dtype_of, name_of, tolerated
from image_enhancer.runtimes.base import ComputeDevice, Runner, RunnerSettings, Runtime
from image_enhancer.runtimes.pytorch.runner import ModelRunner

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor


def resolve_precision(name: str, device: torch.device, descriptor: ModelDescriptor) -> torch.dtype:
    """The compute dtype. ``auto`` is fp16 on CUDA (bf16 if the model is not fp16-safe) and fp32 elsewhere;
    fp16 asked of a model that is not fp16-safe gives bf16 where model and GPU allow it, and any reduced
    precision the device or model cannot honour falls back to fp32."""
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
    return tolerated(name, descriptor, bf16_available=torch.cuda.is_bf16_supported())


class PyTorch(Runtime):
    name = "pytorch"
    display_name = "PyTorch"
    package = "torch"

    def available(self) -> bool:
        return True

    def gpus(self) -> list[ComputeDevice]:
        found = []
        if torch.cuda.is_available():
            found += [
                ComputeDevice(f"cuda:{i}", self.name, torch.cuda.get_device_name(i))
                for i in range(torch.cuda.device_count())
            ]
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            found += [
                ComputeDevice(f"xpu:{i}", self.name, xpu.get_device_name(i))
                for i in range(xpu.device_count())
            ]
        if torch.backends.mps.is_available():
            found.append(ComputeDevice("mps", self.name, "Apple GPU (Metal)"))
        return found

    def batch_device(self, device: ComputeDevice) -> torch.device:
        return torch.device(device.key)

    def device_memory(self, device: ComputeDevice) -> int | None:
        if device.key.startswith("cuda"):
            return torch.cuda.get_device_properties(self.batch_device(device)).total_memory
        return None

    def supports(self, architecture: str) -> bool:
        return True

    def precision(self, asked: str, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> str:
        return name_of(resolve_precision(asked, settings.device.torch_device, loaded.descriptor))

    def make_runner(
        self, loaded: LoadedModel, precision: str, settings: RunnerSettings, seconds_per_pixel: float = 0.0
    ) -> Runner:
        return ModelRunner(loaded, settings.device.torch_device, dtype_of(precision), settings.channels_last)


RUNTIME = PyTorch()
