"""The OpenVINO runtime: runs a batch of tiles through OpenVINO on the CPU.

OpenVINO's CPU plugin (oneDNN's JIT kernels, with AVX-512 and AMX where the CPU has them) was the
fastest CPU runtime in bench/README.md: x4plus 1.3–2× faster than PyTorch and ncnn on an AVX-512
Xeon, and on par with or ahead of ncnn on an AVX2 EPYC. Every architecture OpenVINO's converter takes
reaches it (`weights/openvino_export.py`), every strength included; the engine keeps tiling, alpha
and colour. RRDBNet runs as its body and then its ×4 tail in strips of rows
(``weights.openvino_export.split``), which keeps a whole 512² image one window within 2.5 GB. Each
stage is compiled for the shape it meets (dynamic shapes ran 2× slower), and only the last shape's
compiled stage is kept, so its working memory is held once.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_enhancer.engine import device as torch_device
from image_enhancer.engine import watch
from image_enhancer.engine.strips import STRIP_PIXELS, run_in_strips
from image_enhancer.weights import openvino_int8
from image_enhancer.weights.openvino_export import networks, split

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

log = logging.getLogger(__name__)

# OpenVINO's peak working memory per input pixel relative to PyTorch's estimate for the network's
# first stage, measured as peak RSS over the RSS after warm-up: compact model 1.2 (1024²); x4plus run
# as body and tail in strips 3.5 (384²: 0.53 GB, 512²: 0.88 GB), the body's dense blocks
# concatenating 192 channels that the estimate, which sees layer outputs only, does not count.
OPENVINO_MEMORY_FACTOR = 1.2
OPENVINO_MEMORY_FACTOR_IN_STAGES = 3.5
# Input pixels per strip of x4plus's tail: OpenVINO holds about 12 kB per input pixel there (a quarter
# of ncnn's), so strips four times ncnn's stay near 200 MB while their context rows cost less: at 512
# pixels wide, ncnn-sized strips made the tail 1.5× its work and the engine 8% slower than OpenVINO
# on the whole image.
OPENVINO_STRIP_PIXELS = 4 * STRIP_PIXELS

#: How often a pending inference looks at its job: cancelled, and how far it has got.
POLL_MS = 100

#: OpenVINO's name of each precision a user can ask for.
_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@cache
def openvino_module() -> ModuleType | None:
    """The openvino module, or None when it cannot be imported on this platform."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


class OpenVinoRunner:
    """Runs one network through OpenVINO; callable as the tiler's ``op`` (float32 CPU batch in and out)."""

    def __init__(
        self,
        loaded: LoadedModel,
        cache_dir: Path,
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
        strip_pixels: int = OPENVINO_STRIP_PIXELS,
        int8: Path | None = None,
    ) -> None:
        ov = openvino_module()
        if ov is None:
            raise RuntimeError("the OpenVINO runtime is not installed (pip install openvino)")
        self.descriptor = loaded.descriptor
        self.device = torch.device("cpu")  # where batches come from and results go
        self.dtype = dtype
        self._first_stage = split(loaded)[0].module
        self._ov = ov
        self._core = ov.Core()
        # An int8 network (``int8_network``) runs whole, its float parts in fp32.
        self.int8 = int8 is not None
        self._stages = [(self._core.read_model(int8), 0)] if int8 is not None else networks(loaded, cache_dir)
        self._threads = threads or torch.get_num_threads()
        self.strip_pixels = strip_pixels
        # Per stage: (precision, input shape) and its inference request.
        self._compiled: dict[int, tuple[tuple[torch.dtype, tuple[int, ...]], object]] = {}
        self.fallbacks = 0  # tiles rerun in fp32 because a reduced precision overflowed to Inf/NaN
        self._lock = threading.Lock()
        # Inference seconds per input pixel, per precision: tells a call in progress how far it is.
        self._pace: dict[torch.dtype, watch.Pace] = {}
        self._busy = 0.0  # inference seconds spent in the current call
        self._call_pixels = 0  # input pixels of the current call

    def expect(self, seconds_per_pixel: float) -> None:
        """Take a measured pace (``runtime_choice``) until this runner has measured its own."""
        self._pace.setdefault(self.dtype, watch.Pace()).seconds_per_pixel = seconds_per_pixel

    def bytes_per_pixel(self) -> float:
        d = self.descriptor
        estimate = torch_device.activation_bytes_per_pixel(
            self._first_stage, d.in_channels, d.size_multiple, d.min_size
        )
        factor = OPENVINO_MEMORY_FACTOR_IN_STAGES if len(self._stages) > 1 else OPENVINO_MEMORY_FACTOR
        return estimate * factor * torch.finfo(self.dtype).bits / 32

    def memory_budget(self) -> int:
        return torch_device.memory_budget(torch.device("cpu"))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 → ``(N, C', h·s, w·s)`` float32 on the CPU, one tile at a time."""
        outputs = []
        with self._lock:  # one inference at a time: the compiled model's request is shared
            self._busy, self._call_pixels = 0.0, batch[0, 0].numel() * len(batch)
            for tile in batch.detach().to("cpu", torch.float32):
                values = self._infer(self.dtype, tile[None])
                if self.dtype is not torch.float32 and not torch.isfinite(values).all():
                    self.fallbacks += 1
                    values = self._infer(torch.float32, tile[None])
                outputs.append(values[0])
            self._pace.setdefault(self.dtype, watch.Pace()).learn(self._call_pixels, self._busy)
        return outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)

    def _infer(self, dtype: torch.dtype, window: torch.Tensor) -> torch.Tensor:
        values = window.contiguous().numpy()
        for index, (_model, halo) in enumerate(self._stages):
            run = partial(self._run, index, dtype)
            values = run_in_strips(run, values, halo, self.strip_pixels) if halo else run(values)
        return torch.from_numpy(values)

    def _run(self, stage: int, dtype: torch.dtype, values: np.ndarray) -> np.ndarray:
        request = self._request(stage, dtype, tuple(values.shape))
        # OpenVINO reads the input and writes the output in place, in arrays of ours: no copies of
        # the result (a 4096² output is 200 MB; copying it out cost 15% of a compact model's run).
        output = np.empty(tuple(request.get_output_tensor(0).shape), np.float32)
        request.set_output_tensor(0, self._ov.Tensor(output, shared_memory=True))
        try:
            self._await(request, np.ascontiguousarray(values))
        except RuntimeError as error:
            if "alloc" in str(error).lower() or "memory" in str(error).lower():
                raise MemoryError(f"OpenVINO ran out of memory for a tile: {error}") from error
            raise
        return output

    def _await(self, request: object, values: np.ndarray) -> None:
        """Infer, telling the job's watch how far the call has got and stopping when it is cancelled
        (OpenVINO stops between two layers: well within a second)."""
        job = watch.current()
        started = time.perf_counter()
        request.start_async({0: values}, share_inputs=True)
        try:
            while not request.wait_for(POLL_MS):
                if job is None:
                    continue
                try:
                    job.check()
                except watch.JobCancelled:
                    request.cancel()
                    with contextlib.suppress(RuntimeError):  # "canceled": the request is free again
                        request.wait()
                    raise
                pace = self._pace.get(self.dtype)
                if pace is not None:
                    elapsed = self._busy + time.perf_counter() - started
                    job.part_done(pace.fraction(self._call_pixels, elapsed))
        finally:
            self._busy += time.perf_counter() - started

    def _request(self, stage: int, dtype: torch.dtype, shape: tuple[int, ...]) -> object:
        """An inference request for this stage compiled for this precision and input shape; the
        stage's previous shape is dropped first, so only one holds working memory."""
        key = (dtype, shape)
        known = self._compiled.get(stage)
        if known is None or known[0] != key:
            self._compiled.pop(stage, None)
            model = self._stages[stage][0].clone()
            model.reshape(list(shape))
            compiled = self._core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": _HINTS[dtype],
                    "INFERENCE_NUM_THREADS": self._threads,
                    "NUM_STREAMS": 1,
                },
            )
            self._compiled[stage] = (key, compiled.create_infer_request())
        return self._compiled[stage][1]


#: Network output pixels of a job from which ``auto`` makes a missing int8 version before running it:
#: at 64 MP (a 4 MP photo ×4) the half of the fp32 time it saves exceeds the seconds it takes to make.
INT8_MAKE_PIXELS = 64_000_000
# Keys of int8 versions whose making failed in this process: not tried again for every job.
_int8_failed: set[str] = set()


def int8_network(loaded: LoadedModel, cache_dir: Path, precision: str, job_pixels: int = 0) -> Path | None:
    """Where the int8 version of ``loaded``'s network to run lies, or None for the float one.

    ``int8`` asks for it (made now if need be: seconds, once per weights). ``auto`` takes it when its
    record shows it within the bound and faster; a missing one is made first only for a job of
    ``INT8_MAKE_PIXELS`` or more network output pixels, where making it pays within the job, so
    small jobs (previews, each new strength of a pair) never wait for it. Versions live in
    ``cache_dir/int8``.
    """
    architecture = loaded.descriptor.architecture
    if precision not in ("auto", "int8"):
        return None
    if not openvino_int8.supports(architecture):
        if precision == "int8":
            log.warning("no int8 version is made for %s networks; running in fp32", architecture)
        return None
    int8_dir = Path(cache_dir) / "int8"
    key = openvino_int8.cache_key(loaded)
    try:
        known = openvino_int8.cached(key, int8_dir)
        make = precision == "int8" or job_pixels >= INT8_MAKE_PIXELS
        if known is None and make and key not in _int8_failed:
            log.info("making the int8 version of this %s network (once per weights)", architecture)
            known = openvino_int8.quantize(loaded, networks(loaded, cache_dir)[0][0], int8_dir)
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as why:
        _int8_failed.add(key)
        log.warning("no int8 version of this %s network (%s); running in fp32", architecture, why)
        return None
    if known is None:
        return None
    path, record = known
    if precision == "auto" and not record.pays():
        return None
    if precision == "int8" and not record.within():
        log.warning(
            "int8 is %.2f levels off fp32 on average (largest %.0f, %.1f dB) for this network",
            record.mean_levels, record.max_levels, record.psnr_db,
        )  # fmt: skip
    return path
