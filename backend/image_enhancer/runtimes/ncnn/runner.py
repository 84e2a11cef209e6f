"""The ncnn runtime: runs a batch of tiles through ncnn on the CPU or a Vulkan GPU.

ncnn's hand-written x86/ARM kernels (Winograd 3×3 convolutions with fused activations) are what the
popular desktop upscalers ship for CPUs without a usable GPU, and its Vulkan backend reaches AMD,
Intel and NVIDIA GPUs where PyTorch has no device (bench/README.md compares it with PyTorch and
OpenVINO). The network reaches ncnn from its own state dict (``export.py``),
so every model and every strength runs here; the engine keeps tiling, alpha and colour.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_enhancer import let_openmp_threads_sleep
from image_enhancer.engine import watch
from image_enhancer.models.registry import stored_state_dict
from image_enhancer.runtimes.common import STRIP_PIXELS, Fp32Rerun, as_batch, run_stages
from image_enhancer.runtimes.memory import memory_budget, memory_limit, resident_bytes, stage_bytes_per_pixel
from image_enhancer.runtimes.ncnn.export import INPUT, OUTPUT, cached_export

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

POOL_SIZE_RATIO = 0.5
#: After a pass over an image's windows the pools are kept for the next job while the process holds
#: less than this share of its memory limit (a small job's pools are small: a 256² animevideov3 job in
#: fp32 then takes 0.244 s instead of 0.265; ncnn's own net, which never empties its pools, 0.237) ...
KEEP_POOLS_BELOW = 0.5
#: ... and emptied once the runner has been idle this long, so an idle server holds none of it.
POOLS_IDLE_S = 2.0
# A Vulkan device's heap budget is what ncnn says it may use; a share leaves room for the display.
VULKAN_BUDGET_SHARE = 0.6


@cache
def ncnn_module() -> ModuleType | None:
    """The ncnn module, or None when it cannot be imported on this platform. Its OpenMP threads sleep
    between layers (``let_openmp_threads_sleep``): spinning, they starve the threads that have work."""
    let_openmp_threads_sleep()
    try:
        import ncnn
    except ImportError:
        return None
    return ncnn


#: How ncnn may use half precision: not at all, for storage only (values are rounded to fp16 between
#: layers, arithmetic stays fp32), or for storage and arithmetic (ncnn's own default).
NCNN_PRECISIONS = ("fp32", "fp16-storage", "fp16")


def ncnn_options(ncnn: ModuleType, vulkan: int | None, precision: str, threads: int) -> object:
    """ncnn options for the CPU (``vulkan`` None) or a Vulkan device.

    Measured against PyTorch fp32 on a photo (Vulkan, x4plus): fp16 storage stays within 0.9 of an
    8-bit level, fp16 arithmetic drifts by up to 4 levels (RRDBNet's 69 residual sums each round the
    running features to 11 bits); fp32 matches to 1e-6.
    """
    if precision not in NCNN_PRECISIONS:
        raise ValueError(f"unknown ncnn precision {precision!r}; expected one of {NCNN_PRECISIONS}")
    opt = ncnn.Option()
    opt.num_threads = threads
    opt.openmp_blocktime = 0
    opt.lightmode = True  # free each intermediate blob as soon as its last consumer ran
    opt.use_vulkan_compute = vulkan is not None
    opt.use_fp16_storage = opt.use_fp16_packed = precision != "fp32"
    opt.use_fp16_arithmetic = precision == "fp16"
    opt.use_bf16_storage = opt.use_bf16_packed = False
    return opt


class NcnnRunner:
    """Runs one network through ncnn; callable as the tiler's ``op`` (float32 CPU batch in and out)."""

    def __init__(
        self,
        loaded: LoadedModel,
        cache_dir: Path,
        vulkan: int | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        strip_pixels: int = STRIP_PIXELS,
    ) -> None:
        ncnn = ncnn_module()
        if ncnn is None:
            raise RuntimeError("the ncnn runtime is not installed (pip install ncnn)")
        d = loaded.descriptor
        self.descriptor = d
        self.vulkan = vulkan
        self.precision = precision
        self.device = torch.device("cpu")  # where batches come from and results go
        self.strip_pixels = strip_pixels
        self.stages = cached_export(stored_state_dict(loaded), d.architecture, d.hyperparameters, cache_dir)
        self._ncnn = ncnn
        self._threads = threads or torch.get_num_threads()
        # Our own pools instead of the net's default one: a pool that hands out any cached block at
        # least half the requested size (not three quarters) keeps fewer blocks of near-equal sizes,
        # measured 1004 instead of 1478 MiB over the loaded model for x4plus at 256²; emptied after each
        # batch or pass over an image's windows (``windows``), so an idle server does not hold a tile's
        # worth of memory.
        self._pools = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
        for pool in self._pools:
            pool.set_size_compare_ratio(POOL_SIZE_RATIO)
        self._passes = 0  # passes over an image's windows under way (``windows``)
        self._passes_ended = 0  # a timer empties the pools if no other pass ended since it started
        self._nets = {precision: self._load(precision)}  # fp32's are added when a tile is rerun
        self._rerun = Fp32Rerun(precision, "fp32")
        from image_enhancer.runtimes.ncnn import RUNTIME  # its package, imported before this module runs

        # A window's working memory comes from its first stage; a later stage runs in strips, whose
        # memory (``strip_bytes``) is the same whatever the window and is kept out of the budget.
        estimates = stage_bytes_per_pixel(loaded)
        in_strips = len(estimates) > 1
        self._per_pixel = RUNTIME.working_memory(estimates[0], in_stages=in_strips)
        strip = estimates[-1] * RUNTIME.memory_factor_strip * strip_pixels
        self.strip_bytes = int(strip) if in_strips else 0
        self._lock = threading.Lock()

    def _load(self, precision: str) -> list[object]:
        options = ncnn_options(self._ncnn, self.vulkan, precision, self._threads)
        options.blob_allocator, options.workspace_allocator = self._pools
        nets = []
        for stage in self.stages:
            net = self._ncnn.Net()
            net.opt = options
            if self.vulkan is not None:
                net.set_vulkan_device(self.vulkan)
            if net.load_param(str(stage.param)) != 0 or net.load_model(str(stage.weights)) != 0:
                raise RuntimeError(f"ncnn could not load the exported network {stage.param.name}")
            nets.append(net)
        return nets

    def bytes_per_pixel(self) -> float:
        return self._per_pixel

    def memory_budget(self, give_back_freed: bool = True) -> int:
        if give_back_freed:
            with self._lock:
                if not self._passes:
                    self._empty_pools()
        if self.vulkan is None:
            budget = memory_budget(torch.device("cpu"), give_back_freed=give_back_freed)
        else:
            heap_mb = self._ncnn.get_gpu_device(self.vulkan).get_heap_budget()
            budget = int(heap_mb * (1 << 20) * VULKAN_BUDGET_SHARE)
        return max(budget // 4, budget - self.strip_bytes)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 → ``(N, C', h·s, w·s)`` float32 on the CPU, one tile at a time."""
        outputs = []
        tiles = batch.detach().to("cpu", torch.float32).numpy()
        with self._lock:  # one extraction at a time: ncnn's blob allocators are per net
            for index, tile in enumerate(tiles):
                run = partial(self._chain, values=tile, share=(index, len(tiles)))
                outputs.append(torch.from_numpy(self._rerun(run)))
            if not self._passes:
                self._empty_pools()
        return as_batch(outputs)

    @contextmanager
    def windows(self) -> Iterator[None]:
        """One pass over an image's windows (the tiler's): the pools keep what a window allocated for the
        next, which then does not fault it in again (three rows of 1024-wide windows of animevideov3:
        7 % faster); when the pass ends they are emptied, or kept a while for the next job
        (``KEEP_POOLS_BELOW``)."""
        with self._lock:
            self._passes += 1
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1
                if not self._passes:
                    self._pass_ended()

    def _pass_ended(self) -> None:
        """With the lock held."""
        if resident_bytes() > KEEP_POOLS_BELOW * memory_limit():
            self._empty_pools()
            return
        self._passes_ended += 1
        timer = threading.Timer(POOLS_IDLE_S, self._empty_pools_if_idle, (self._passes_ended,))
        timer.daemon = True
        timer.start()

    def _empty_pools_if_idle(self, pass_count: int) -> None:
        with self._lock:
            if not self._passes and pass_count == self._passes_ended:
                self._empty_pools()

    def _empty_pools(self) -> None:
        for pool in self._pools:
            pool.clear()

    @property
    def fallbacks(self) -> int:
        """Tiles rerun in fp32 because fp16 overflowed to Inf/NaN."""
        return self._rerun.fallbacks

    def _chain(self, precision: str, values: np.ndarray, share: tuple[int, int]) -> np.ndarray:
        """One tile through the chain; ``share``: which tile of the call it is, and of how many."""
        if precision not in self._nets:
            self._nets[precision] = self._load(precision)
        nets = self._nets[precision]
        stages = [
            (partial(self._run, net, s.checkpoints, share), s.halo)
            for net, s in zip(nets, self.stages, strict=True)
        ]
        return run_stages(stages, values, self.strip_pixels)

    def _run(
        self, net: object, checkpoints: tuple[str, ...], share: tuple[int, int], values: np.ndarray
    ) -> np.ndarray:
        # ncnn's Mat borrows the array's memory: the array must outlive the extraction.
        values = np.ascontiguousarray(values, dtype=np.float32)
        extractor = net.create_extractor()
        try:
            extractor.input(INPUT, self._ncnn.Mat(values))
            # The stage's checkpoints first, one after another: ncnn cannot be stopped inside an
            # extraction, so between them the job is told how far this call is and stops when cancelled.
            # Each is taken as ncnn holds it (type 1: not unpacked), and dropped at once.
            job = watch.current()
            for done, blob in enumerate(checkpoints):
                if job is not None:
                    job.check()
                    index, tiles = share
                    job.part_done((index + done / len(checkpoints)) / tiles)
                self._checked(extractor.extract(blob, 1)[0])
            status, output = extractor.extract(OUTPUT)
            self._checked(status)
            return np.array(output)
        finally:
            # The blobs go back to the pools now: a stopped extraction's traceback would otherwise hold
            # them, maybe beyond the pools themselves (ncnn then reports a pool destroyed in use).
            extractor.clear()

    @staticmethod
    def _checked(status: int) -> None:
        if status != 0:
            # ncnn reports a failed allocation as -100; anything else is a broken graph.
            if status == -100:
                raise MemoryError("ncnn ran out of memory for a tile")
            raise RuntimeError(f"ncnn failed on a tile (status {status})")
