"""Which runtime runs a network outside the tiled engine on the CPU: the face pass's (the MTCNN
detector's three, the restorer).

OpenVINO where it is installed and takes the network, else PyTorch, with a log line saying why. A
network goes to OpenVINO through the enhancement's own exporter (``runtimes/openvino/export.py``):
converted once per graph into the same cache, and refused when the converted network strays from
PyTorch's on a check input by more than ``export.TOLERANCE`` (1e-4 of the output's range). Which
networks are worth it was measured (README, "Portraits: restoring faces"); the callers say so with
the runtime they ask for. The face pass always runs on the CPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from image_enhancer.paths import runtime_cache_dir
from image_enhancer.runtimes.base import UnsupportedGraphError
from image_enhancer.runtimes.openvino import export
from image_enhancer.runtimes.openvino.runner import NetworkRunner, openvino_module

log = logging.getLogger(__name__)

#: What a face network can be asked to run on: "auto" is each network's measured choice.
RUNTIMES = ("auto", "openvino", "pytorch")
PYTORCH = "pytorch"
OPENVINO = export.NAME


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise ValueError(f"unknown face runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    return name


class CpuNetwork:
    """``module`` (a batch in, a tensor or a tuple of tensors out) run on the CPU by ``runtime``
    ("openvino" or "pytorch"), which it falls back from to PyTorch when OpenVINO is missing or refuses
    the network. Converted on first use (``prepare``): a face model that finds no face costs no
    conversion; once OpenVINO runs it, the PyTorch module is let go. Calls return a tuple of float32
    tensors.

    example: the check input (its shape where ``shape`` has -1); shape: the input shape the graph is
    converted for; also: check inputs of other shapes, for a graph converted with free dimensions (a
    converter fixes whatever arithmetic on the shape it traced); swappable: whether a converted graph
    may take other weights of the same graph (``export.network``); label: the network's name in the
    cache and the log."""

    def __init__(
        self,
        module: torch.nn.Module,
        example: Tensor,
        label: str,
        runtime: str,
        shape: tuple[int, ...] | None = None,
        also: tuple[Tensor, ...] = (),
        swappable: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self.module: torch.nn.Module | None = module.eval().requires_grad_(False)
        self.label = label
        self.asked = runtime
        self._example: Tensor | None = example
        self._shape, self._also, self._swappable = shape, also, swappable
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._run: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        #: The runtime that runs it, once prepared.
        self.runtime: str | None = None

    def prepare(self) -> str:
        """Convert (or read from the cache) and compile now; the runtime that will run it."""
        with self._lock:
            if self._run is None:
                self.runtime, self._run = self._build()
                if self.runtime == OPENVINO:  # its weights are OpenVINO's now: not held twice
                    self.module, self._example, self._also = None, None, ()
            return self.runtime  # type: ignore[return-value]

    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]:
        if self._run is None:
            self.prepare()
        return self._run(batch)  # type: ignore[misc]

    def _build(self) -> tuple[str, Callable[[Tensor], tuple[Tensor, ...]]]:
        if self.asked == OPENVINO:
            if openvino_module() is None:
                log.info("%s runs on PyTorch: OpenVINO is not installed", self.label)
            else:
                cache = Path(self._cache_dir) if self._cache_dir else runtime_cache_dir() / export.NAME
                try:
                    model = export.network(self.module, self._example, self.label, {}, cache, self._shape,
                                           swappable=self._swappable)
                    for batch in self._also:
                        if not export.matches(model, self.module, batch):
                            shape = "×".join(map(str, batch.shape))
                            raise UnsupportedGraphError(f"OpenVINO's {self.label} does not match PyTorch's "
                                                        f"on a {shape} input")
                    return OPENVINO, NetworkRunner(model)
                except UnsupportedGraphError as why:
                    log.warning("%s runs on PyTorch: %s", self.label, why)
        module = self.module

        @torch.inference_mode()
        def run(batch: Tensor) -> tuple[Tensor, ...]:
            out = module(batch)
            return tuple(out) if isinstance(out, tuple | list) else (out,)

        return PYTORCH, run
