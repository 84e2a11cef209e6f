"""Memory every runtime sizes its windows by: the budget on a device, the process's limit, and the
working memory per input pixel a network needs; and the CPU thread count every runtime uses."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import torch

from image_enhancer import architectures

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel


def set_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for intra-op work (None: PyTorch's default, one per core); every
    runtime takes its thread count from PyTorch's."""
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


def memory_budget(
    device: torch.device, fraction: float = 0.6, reusable: int = 0, give_back_freed: bool = True
) -> int:
    """Bytes the network's working memory may use for one batch on ``device``.

    CUDA (and ROCm) or XPU: a share of the free memory now. CPU: what the process may still take within
    its memory limit (``memory_limit()``, less what it holds now and a margin) and within a share of
    the RAM still available, so windows are as large as the memory actually free allows: one window,
    no context computed twice, where it fits. MPS: a fixed 2 GiB (unified memory, no reliable free figure).
    ``reusable``: CPU bytes the process holds for the runner asking (its compiled network's working
    memory), which the job reuses or frees before taking more.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    if device.type == "xpu":
        free, _total = torch.xpu.mem_get_info(device)
        return int(free * fraction)
    if device.type == "mps":
        return 2 << 30
    # Freed but still resident memory (glibc keeps it) would make the budget depend on what ran before:
    # the same job planned as one window or as four.
    if give_back_freed:
        return_freed_memory()
    within_limit = memory_limit() - resident_bytes() + reusable - MEMORY_MARGIN
    return int(max(MIN_CPU_BUDGET, min(available_ram() * fraction + reusable, within_limit)))


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
    probe = _probe(module, in_channels, multiple, min_size)
    return _peak_values(module, probe)[0] * dtype_bytes / probe[0, 0].numel()


def stage_bytes_per_pixel(loaded: LoadedModel, dtype_bytes: int = 4) -> list[float]:
    """``activation_bytes_per_pixel`` of each stage of ``loaded``'s chain (``architectures.stages``: RRDBNet's
    body, then its tail), per pixel of the image the chain is given."""
    d = loaded.descriptor
    probe = _probe(loaded.module, d.in_channels, d.size_multiple, d.min_size)
    pixels = probe[0, 0].numel()
    found = []
    for part in architectures.stages(loaded.module, d.architecture):
        peak, probe = _peak_values(part.module, probe)
        found.append(peak * dtype_bytes / pixels)
    return found


def _probe(module: torch.nn.Module, in_channels: int, multiple: int, min_size: int) -> torch.Tensor:
    side = max(16, min_size)
    side = -(-side // multiple) * multiple
    parameter = next(module.parameters())
    return torch.zeros(1, in_channels, side, side, dtype=parameter.dtype, device=parameter.device)


def _peak_values(module: torch.nn.Module, probe: torch.Tensor) -> tuple[int, torch.Tensor]:
    """The estimated peak number of values alive while ``module`` runs on ``probe``, and its output."""
    largest = 0

    def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())

    handles = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            output = module(probe)
    finally:
        for handle in handles:
            handle.remove()
    return 3 * largest + output.numel(), output


def return_freed_memory() -> None:
    """Give memory freed by the C allocator back to the system (glibc keeps it otherwise), so that the
    resident size the memory budget starts from is what is really in use: after the runtimes were
    timed, 0.27 GB of x4plus's freed buffers stayed resident; after one compact-model job at 1024²,
    60 MB. Not free: the next job's buffers are faulted in again (5 ms of a 70 ms compact job at 256²)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to do
        pass
