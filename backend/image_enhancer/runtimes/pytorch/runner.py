"""The PyTorch runtime's runner: runs a network on batches of tiles on any torch device.

``ModelRunner`` is the ``op`` the tiler calls: it moves a CPU batch to the device, runs the network in
the chosen precision under ``torch.inference_mode``, and reruns in fp32 any batch whose reduced-precision
output holds NaN or Inf (``common.Fp32Rerun``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from image_enhancer.engine import watch
from image_enhancer.runtimes.common import Fp32Rerun
from image_enhancer.runtimes.memory import activation_bytes_per_pixel, memory_budget

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel


class ModelRunner:
    """Runs one network on one device in one precision; callable as the tiler's ``op``."""

    def __init__(
        self, loaded: LoadedModel, device: torch.device, dtype: torch.dtype, channels_last: bool | None = None
    ) -> None:
        self.descriptor = loaded.descriptor
        self.device = device
        self.dtype = dtype
        # channels_last pays on CUDA tensor cores and with oneDNN on CPU (measured ×1.3–1.5 for the
        # compact model, see bench/README.md); MPS kernels for it are patchy, so it stays off there.
        self.channels_last = device.type != "mps" if channels_last is None else channels_last
        self._source = loaded.module
        self._modules = {dtype: self._prepare(dtype)}  # fp32's is added when a batch is rerun
        self._rerun = Fp32Rerun(dtype, torch.float32)

    def _prepare(self, dtype: torch.dtype) -> torch.nn.Module:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.device.type == "cpu" and dtype is torch.float32 and not self.channels_last:
            return watch.watch_layers(self._source)  # already eval, fp32, on the CPU: no copy needed
        module = copy.deepcopy(self._source).to(device=self.device, dtype=dtype, memory_format=memory_format)
        return watch.watch_layers(module.eval())

    def memory_budget(self, give_back_freed: bool = True) -> int:
        return memory_budget(self.device, give_back_freed=give_back_freed)

    def bytes_per_pixel(self) -> float:
        """Peak working memory per input pixel at this runner's precision."""
        d = self.descriptor
        per_pixel = activation_bytes_per_pixel(self._source, d.in_channels, d.size_multiple, d.min_size)
        return per_pixel * torch.finfo(self.dtype).bits / 32

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 (any device) → float32 output on this runner's device."""
        with torch.inference_mode():
            moved = batch.to(self.device, non_blocking=True)
            return self._rerun(lambda dtype: self._forward(moved, dtype))

    @property
    def fallbacks(self) -> int:
        """Batches rerun in fp32 because of NaN/Inf."""
        return self._rerun.fallbacks

    def _forward(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._modules:
            self._modules[dtype] = self._prepare(dtype)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.to(dtype=dtype).contiguous(memory_format=memory_format)
        return self._modules[dtype](batch).float()
