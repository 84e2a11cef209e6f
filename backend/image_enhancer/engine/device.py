"""Memory budgets, and running a network on batches of tiles with PyTorch (the precision comes from
``precision.py``).

``ModelRunner`` is the ``op`` the tiler calls: it moves a CPU batch to the device, runs the network in
the chosen precision under ``torch.inference_mode``, and reruns in fp32 any batch whose reduced-precision
output holds NaN or Inf (fp16 overflows inside some GAN models on bright areas).
"""

from __future__ import annotations

import copy
import os
import sys
from typing import TYPE_CHECKING

import torch

from image_enhancer.engine import watch

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

def set_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for intra-op work (None: PyTorch's default, one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"thread count must be at least 1, got {threads}")
    torch.set_num_threads(threads)


#: The most memory a CPU process of ours holds, as the product promises (2.5 GB); a machine or a user
#: that can give more sets IMAGE_ENHANCER_MEMORY_LIMIT (bytes, or with a K/M/G suffix).
DEFAULT_MEMORY_LIMIT = 2_500_000_000
MEMORY_LIMIT_ENV = "IMAGE_ENHANCER_MEMORY_LIMIT"
#: Kept free of the limit for what a job allocates besides the network's working memory (the runtime's
#: compiled kernels for a new shape, the tiles being blended, the conversion of the result's bands).
MEMORY_MARGIN = 150_000_000
#: The working memory a CPU job gets at least, whatever the process holds already: below it windows
#: become so small that their context costs more than the work.
MIN_CPU_BUDGET = 256 << 20


def memory_budget(device: torch.device, fraction: float = 0.6) -> int:
    """Bytes the network's working memory may use for one batch on ``device``.

    CUDA (and ROCm) or XPU: a share of the free memory now. CPU: what the process may still take within
    its memory limit (``memory_limit()``, less what it holds now and a margin) and within a share of
    the RAM still available, so windows are as large as the memory actually free allows: one window,
    no context computed twice, where it fits. MPS: a fixed 2 GiB (unified memory, no reliable free figure).
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    if device.type == "xpu":
        free, _total = torch.xpu.mem_get_info(device)
        return int(free * fraction)
    if device.type == "mps":
        return 2 << 30
    within_limit = memory_limit() - resident_bytes() - MEMORY_MARGIN
    return int(max(MIN_CPU_BUDGET, min(available_ram() * fraction, within_limit)))


def memory_limit() -> int:
    """The process's memory limit in bytes: IMAGE_ENHANCER_MEMORY_LIMIT, else DEFAULT_MEMORY_LIMIT."""
    value = os.environ.get(MEMORY_LIMIT_ENV, "").strip().upper()
    if not value:
        return DEFAULT_MEMORY_LIMIT
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:], 1)
    try:
        limit = float(value[:-1] if factor > 1 else value) * factor
    except ValueError:
        raise ValueError(f"{MEMORY_LIMIT_ENV}={value!r} is not a size (e.g. 2500000000, 4G, 800M)") from None
    if limit < MIN_CPU_BUDGET:
        raise ValueError(f"{MEMORY_LIMIT_ENV} must be at least {MIN_CPU_BUDGET >> 20} MiB")
    return int(limit)


def resident_bytes() -> int:
    """The memory this process holds now (Linux: VmRSS; elsewhere the peak so far, an upper bound)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB
    except (ImportError, OSError):
        return 0


def available_ram() -> int:
    """Available RAM in bytes (Linux MemAvailable, else total physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def activation_bytes_per_pixel(
    module: torch.nn.Module, in_channels: int, multiple: int = 1, min_size: int = 1, dtype_bytes: int = 4
) -> float:
    """Estimated peak working memory per input pixel, from one tiny CPU forward pass.

    Forward hooks record each layer's output size; the peak is taken as three times the largest
    (input, output and a temporary of a layer are alive together) plus the network's output.
    """
    side = max(16, min_size)
    side = -(-side // multiple) * multiple
    largest = 0
    output_numel = 0

    def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())

    handles = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            probe = torch.zeros(
                1,
                in_channels,
                side,
                side,
                dtype=next(module.parameters()).dtype,
                device=next(module.parameters()).device,
            )
            output_numel = module(probe).numel()
    finally:
        for handle in handles:
            handle.remove()
    return (3 * largest + output_numel) * dtype_bytes / (side * side)


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
        self._module = self._prepare(dtype)
        self._fp32: torch.nn.Module | None = self._module if dtype is torch.float32 else None
        self.fallbacks = 0  # batches rerun in fp32 because of NaN/Inf

    def _prepare(self, dtype: torch.dtype) -> torch.nn.Module:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.device.type == "cpu" and dtype is torch.float32 and not self.channels_last:
            return watch.watch_layers(self._source)  # already eval, fp32, on the CPU: no copy needed
        module = copy.deepcopy(self._source).to(device=self.device, dtype=dtype, memory_format=memory_format)
        return watch.watch_layers(module.eval())

    def memory_budget(self) -> int:
        return memory_budget(self.device)

    def bytes_per_pixel(self) -> float:
        """Peak working memory per input pixel at this runner's precision."""
        d = self.descriptor
        per_pixel = activation_bytes_per_pixel(self._source, d.in_channels, d.size_multiple, d.min_size)
        return per_pixel * torch.finfo(self.dtype).bits / 32

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 (any device) → float32 output on this runner's device."""
        with torch.inference_mode():
            moved = batch.to(self.device, non_blocking=True)
            output = self._forward(self._module, moved, self.dtype)
            if self.dtype is not torch.float32 and not torch.isfinite(output).all():
                self.fallbacks += 1
                if self._fp32 is None:
                    self._fp32 = self._prepare(torch.float32)
                output = self._forward(self._fp32, moved, torch.float32)
            return output

    def _forward(self, module: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.to(dtype=dtype).contiguous(memory_format=memory_format)
        return module(batch).float()
