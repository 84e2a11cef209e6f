"""The OpenVINO runtime: runs a batch of tiles through OpenVINO on the CPU.

OpenVINO's CPU plugin (oneDNN's JIT kernels, with AVX-512 and AMX where the CPU has them) was the
fastest CPU runtime in bench/README.md: x4plus 1.3–2× faster than PyTorch and ncnn on an AVX-512
Xeon, and on par with or ahead of ncnn on an AVX2 EPYC. Every architecture OpenVINO's converter takes
reaches it (``export.py``), every strength included; the engine keeps tiling, alpha
and colour. RRDBNet runs as its body and then its ×4 tail in strips of rows
(``architectures.stages``), which keeps a whole 512² image one window within 2.5 GB. In a reduced precision
its residual sums stay in fp32 between finer parts (``export.reduced_precision_networks``). Each
stage is compiled for the shape it meets (dynamic shapes ran 2× slower), and only the last shape's
compiled stage is kept, so its working memory is held once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_enhancer.architectures.base import Sum, map_chain
from image_enhancer.engine import watch
from image_enhancer.runtimes.common import STRIP_PIXELS, Fp32Rerun, as_batch, run_stages
from image_enhancer.runtimes.memory import memory_budget, resident_bytes, stage_bytes_per_pixel
from image_enhancer.runtimes.openvino.export import HINTS, Network, networks, reduced_precision_networks

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

# Input pixels per strip of x4plus's tail: OpenVINO holds about 12 kB per input pixel there (a quarter
# of ncnn's), so strips four times ncnn's stay near 200 MB while their context rows cost less: at 512
# pixels wide, ncnn-sized strips made the tail 1.5× its work and the engine 8% slower than OpenVINO
# on the whole image.
OPENVINO_STRIP_PIXELS = 4 * STRIP_PIXELS

#: How often a pending inference looks at its job: cancelled, and how far it has got.
POLL_MS = 100


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
        self._loaded = loaded
        self._ov = ov
        self._core = ov.Core()
        # An int8 network (``int8_network``) runs whole, its float parts in ``dtype`` (``int8.float_dtype``).
        self.int8 = int8 is not None
        if int8 is not None:
            self._stages: list[Network | Sum[Network]] = [Network(self._core.read_model(int8), "int8")]
        else:
            self._stages = networks(loaded, cache_dir)
        # A reduced precision runs the architecture's finer chain, where it has one; fp32 (and a rerun
        # in fp32) the plain one.
        reduced = dtype != torch.float32 and int8 is None
        self._reduced_stages = reduced_precision_networks(loaded, cache_dir) if reduced else None
        # A network run whole in one piece gives its result channels last, as OpenVINO computes its last
        # layers and as a picture's samples are interleaved: no reorder in OpenVINO and no transposing
        # copy when the engine makes the picture (a compact model's job: 5 % faster at 256² and 1024²).
        only = self._stages[0]
        self._channels_last = len(self._stages) == 1 and isinstance(only, Network) and not only.halo
        self._threads = threads or torch.get_num_threads()
        self.strip_pixels = strip_pixels
        # Per network key: (precision, input shape) and its inference request.
        self._compiled: dict[str, tuple[tuple[torch.dtype, tuple[int, ...]], object]] = {}
        # Per network key: the memory its compiled network holds between jobs (OpenVINO keeps its
        # working memory), measured around its first inference; the resident size before, until then.
        self._held: dict[str, int] = {}
        self._resident_before: dict[str, int] = {}
        self._per_pixel: float | None = None
        self._rerun = Fp32Rerun(dtype, torch.float32)
        self._lock = threading.Lock()
        # Inference seconds per input pixel, per precision: tells a call in progress how far it is.
        self._pace: dict[torch.dtype, watch.Pace] = {}
        self._busy = 0.0  # inference seconds spent in the current call
        self._call_pixels = 0  # input pixels of the current call

    def expect(self, seconds_per_pixel: float) -> None:
        """Take a measured pace (``runtime_choice``) until this runner has measured its own."""
        self._pace.setdefault(self.dtype, watch.Pace()).seconds_per_pixel = seconds_per_pixel

    def bytes_per_pixel(self) -> float:
        if self._per_pixel is None:
            self._per_pixel = self._estimate_bytes_per_pixel()
        return self._per_pixel

    def _estimate_bytes_per_pixel(self) -> float:
        estimate = stage_bytes_per_pixel(self._loaded)[0]  # a later stage runs in strips
        from image_enhancer.runtimes.openvino import RUNTIME  # its package, imported before this module runs

        per_pixel = RUNTIME.working_memory(estimate, in_stages=len(self._stages) > 1)
        if self._reduced_stages is not None:  # fp32 parts beside reduced ones, and fp32 sums between
            return per_pixel * RUNTIME.memory_factor_reduced_chain
        return per_pixel * torch.finfo(self.dtype).bits / 32

    def memory_budget(self, give_back_freed: bool = True) -> int:
        # What the compiled networks hold is reused, or freed before another shape is compiled: without
        # counting it, a 1024² job planned as one window left 0.43 GB held, the next one was planned as
        # four windows (and compiled again), the one after that as one window again.
        held = sum(self._held.values())
        return memory_budget(torch.device("cpu"), reusable=held, give_back_freed=give_back_freed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 → ``(N, C', h·s, w·s)`` float32 on the CPU, one tile at a time."""
        outputs = []
        with self._lock:  # one inference at a time: the compiled model's request is shared
            self._busy, self._call_pixels = 0.0, batch[0, 0].numel() * len(batch)
            for tile in batch.detach().to("cpu", torch.float32):
                outputs.append(self._rerun(partial(self._infer, window=tile[None]))[0])
            self._pace.setdefault(self.dtype, watch.Pace()).learn(self._call_pixels, self._busy)
        return as_batch(outputs)

    @property
    def fallbacks(self) -> int:
        """Tiles rerun in fp32 because a reduced precision overflowed to Inf/NaN."""
        return self._rerun.fallbacks

    def _infer(self, dtype: torch.dtype, window: torch.Tensor) -> torch.Tensor:
        chain = self._stages
        if dtype != torch.float32 and self._reduced_stages is not None:
            chain = self._reduced_stages
        stages = map_chain(chain, lambda network: (partial(self._run, network, dtype), network.halo))
        return torch.from_numpy(run_stages(stages, window.contiguous().numpy(), self.strip_pixels))

    def _run(self, network: Network, dtype: torch.dtype, values: np.ndarray) -> np.ndarray:
        dtype = torch.float32 if network.fp32 else dtype
        request = self._request(network, dtype, tuple(values.shape))
        # OpenVINO reads the input and writes the output in place, in arrays of ours: no copies of
        # the result (a 4096² output is 200 MB; copying it out cost 15% of a compact model's run).
        output = np.empty(tuple(request.get_output_tensor(0).shape), np.float32)
        request.set_output_tensor(0, self._ov.Tensor(output, shared_memory=True))
        inputs = {0: np.ascontiguousarray(values)}
        inputs.update(enumerate(network.weights, start=1))
        before = self._resident_before.pop(network.key, None)  # measured only on a first inference done
        try:
            self._await(request, inputs)
        except RuntimeError as error:
            if "alloc" in str(error).lower() or "memory" in str(error).lower():
                raise MemoryError(f"OpenVINO ran out of memory for a tile: {error}") from error
            raise
        if before is not None:  # its first inference: what it took, less our output, is held from now
            grown = resident_bytes() - before - output.nbytes
            estimate = self.bytes_per_pixel() * values.shape[-2] * values.shape[-1]
            self._held[network.key] = int(min(max(grown, 0), estimate))
        return output.transpose(0, 3, 1, 2) if self._channels_last else output  # (N, C, H, W), any strides

    def _await(self, request: object, inputs: dict[int, np.ndarray]) -> None:
        """Infer, telling the job's watch how far the call has got and stopping when it is cancelled
        (OpenVINO stops between two layers: well within a second)."""
        job = watch.current()
        started = time.perf_counter()
        request.start_async(inputs, share_inputs=True)
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

    def _request(self, network: Network, dtype: torch.dtype, shape: tuple[int, ...]) -> object:
        """An inference request for this network compiled for this precision and input shape; the
        network's previous shape is dropped first, so only one holds working memory."""
        key = (dtype, shape)
        known = self._compiled.get(network.key)
        if known is None or known[0] != key:
            self._compiled.pop(network.key, None)
            self._held.pop(network.key, None)
            self._resident_before[network.key] = resident_bytes()
            model = network.model.clone()
            model.reshape({0: list(shape)})  # the picture; weights given as inputs keep their shapes
            if self._channels_last:
                model = _with_channels_last_output(model)
            compiled = self._core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": HINTS[dtype],
                    "INFERENCE_NUM_THREADS": self._threads,
                    "NUM_STREAMS": 1,
                },
            )
            self._compiled[network.key] = (key, compiled.create_infer_request())
        return self._compiled[network.key][1]


def _with_channels_last_output(model: object) -> object:
    """``model`` giving its ``(N, C, H, W)`` result as ``(N, H, W, C)``."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.output(0).model().set_layout(ov.Layout("NCHW"))
    steps.output(0).tensor().set_layout(ov.Layout("NHWC"))
    return steps.build()


class NetworkRunner:
    """A network run whole through OpenVINO on the CPU in fp32, outside the tiler (the face pass's
    detector and restorer): a float32 batch in, the network's outputs out as a tuple. Compiled once for
    the shape it was converted for; a dimension left free there (MTCNN's image pyramid, its batches of
    crops) costs no compile per shape. One inference at a time: the request is shared."""

    def __init__(self, model: object, threads: int | None = None) -> None:
        ov = openvino_module()
        if ov is None:
            raise RuntimeError("the OpenVINO runtime is not installed (pip install openvino)")
        settings = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "NUM_STREAMS": 1,
        }
        compiled = ov.Core().compile_model(model, "CPU", settings)
        self._outputs = len(compiled.outputs)
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        with self._lock:
            self._request.infer({0: values}, share_inputs=True)
            return tuple(
                torch.from_numpy(self._request.get_output_tensor(i).data.copy()) for i in range(self._outputs)
            )
