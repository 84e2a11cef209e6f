"""What every runtime is to the engine: a ``Runtime`` (what it reaches, runs and how), the ``Runner`` it
makes for one network, and the ``ComputeDevice`` it runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from image_enhancer.engine.precision import Difference
    from image_enhancer.models.descriptor import LoadedModel


class UnsupportedGraphError(ValueError):
    """A runtime cannot convert or faithfully run this network (the reference runtime still runs it)."""


@dataclass(frozen=True)
class ComputeDevice:
    """One place the network can run. ``key`` is what ``--device`` takes."""

    key: str  # "cuda:0", "xpu:0", "mps", "vulkan:0", "cpu"
    runtime: str  # the name of the runtime that runs it (``Runtime.name``)
    name: str
    software: bool = False  # a GPU device that is really the CPU (a software rasteriser)

    @property
    def index(self) -> int | None:
        """The device's number among its kind ("vulkan:1" → 1); None for the CPU and MPS."""
        return int(self.key.split(":")[1]) if ":" in self.key else None

    @property
    def torch_device(self) -> torch.device:
        """Where batches live: the device's own runtime says (a GPU for PyTorch's, else the CPU)."""
        from image_enhancer import runtimes

        return runtimes.get(self.runtime).batch_device(self)

    def describe(self) -> str:
        from image_enhancer import runtimes

        where = "CPU" if self.key == "cpu" else self.key
        return f"{self.name} ({where}, {runtimes.get(self.runtime).display_name})"


class Runner(Protocol):
    """A runtime running one network: the tiler's ``op`` plus what the engine needs to size tiles."""

    device: torch.device  # where its outputs land

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def bytes_per_pixel(self) -> float: ...

    def memory_budget(self, give_back_freed: bool = True) -> int: ...


@dataclass(frozen=True)
class RunnerSettings:
    """What the engine fixes for every runner it makes: the device, the cache root (each runtime keeps
    its converted networks in ``cache / name``) and PyTorch's memory layout (None: its default)."""

    device: ComputeDevice
    cache: Path
    channels_last: bool | None = None


@dataclass(frozen=True)
class Derived:
    """A version of a network that a runtime measured against its own fp32 elsewhere (OpenVINO's int8):
    ``speedup`` over that fp32 and its ``difference`` from it."""

    precision: str
    speedup: float
    difference: Difference


class Runtime:
    """One runtime; each package under ``runtimes/`` defines one and the registry lists them."""

    name: str  # what --runtime takes and the runtime-choice table records
    display_name: str
    package: str  # the pip distribution that brings it (its version keys measured timings)
    #: Its peak working memory per input pixel relative to PyTorch's estimate for the same network
    #: (``memory.activation_bytes_per_pixel``), for a network run whole and for one run as a chain of
    #: stages (its first stage's estimate; a stage at the output resolution in strips of rows).
    memory_factor: float = 1.0
    memory_factor_in_stages: float = 1.0

    def available(self) -> bool:
        """Whether it can be imported here."""
        raise NotImplementedError

    def gpus(self) -> list[ComputeDevice]:
        """The GPUs it reaches here (the CPU is every runtime's)."""
        return []

    def batch_device(self, device: ComputeDevice) -> torch.device:
        """Where batches for ``device`` live: CPU arrays unless the runtime takes torch tensors there."""
        return torch.device("cpu")

    def device_memory(self, device: ComputeDevice) -> int | None:
        """The memory of one of its GPUs in bytes; None when the runtime does not know."""
        return None

    def supports(self, architecture: str) -> bool:
        """Whether it runs networks of this architecture (else the reference runtime does)."""
        raise NotImplementedError

    def native_precisions(self) -> tuple[str, ...]:
        """The reduced precisions it computes natively on this CPU, timed beside fp32: emulated ones are
        slower than fp32."""
        return ()

    def precision(self, asked: str, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> str:
        """The precision it runs ``loaded`` in when the user asked for ``asked`` (``job_pixels``: the
        network output of the job at hand, for versions that pay only on large jobs)."""
        raise NotImplementedError

    def derived(self, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> list[Derived]:
        """Versions of ``loaded`` beside the timed ones that the measured choice with precision ``auto``
        may take."""
        return []

    def make_runner(
        self, loaded: LoadedModel, precision: str, settings: RunnerSettings, seconds_per_pixel: float = 0.0
    ) -> Runner:
        """A runner of ``loaded`` in ``precision``; UnsupportedGraphError when it cannot take the graph.
        ``seconds_per_pixel``: its measured pace, where known, for progress inside a call."""
        raise NotImplementedError

    def working_memory(self, estimate: float, in_stages: bool) -> float:
        """Bytes per input pixel this runtime needs where PyTorch's estimate is ``estimate``."""
        return estimate * (self.memory_factor_in_stages if in_stages else self.memory_factor)

    def cache(self, settings: RunnerSettings) -> Path:
        return Path(settings.cache) / self.name
