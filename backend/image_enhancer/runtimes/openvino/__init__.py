"""The OpenVINO runtime (CPU): the fastest CPU runtime on x86 in bench/README.md, with int8 versions of
the networks whose int8 stays within the bound (``int8.py``)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from image_enhancer.engine.precision import Difference, check_precision, dtype_of, name_of, tolerated
from image_enhancer.runtimes import cpu
from image_enhancer.runtimes.base import Derived, Runner, RunnerSettings, Runtime
from image_enhancer.runtimes.openvino import export
from image_enhancer.runtimes.openvino.runner import OpenVinoRunner, openvino_module

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor


def cpu_precision(name: str, descriptor: ModelDescriptor) -> torch.dtype:
    """The compute dtype: fp32 unless asked otherwise, because a CPU's bf16 (AVX-512 BF16, AMX) ran
    x4plus about 4× faster but up to 8 levels off (0.5 on average; the compact model under 2)."""
    check_precision(name)
    return tolerated(name, descriptor, bf16_available=True)


def _int8() -> ModuleType:
    """``int8.py``, imported where used: it is also the quantizing child's ``python -m`` module, which
    must not be imported before it runs as ``__main__``."""
    from image_enhancer.runtimes.openvino import int8

    return int8


class OpenVino(Runtime):
    name = export.NAME
    display_name = "OpenVINO"
    package = "openvino"
    # Measured as peak RSS over the RSS after warm-up: compact model 1.2 (1024²); x4plus run as body and
    # tail in strips 3.5 (384²: 0.53 GB, 512²: 0.88 GB), the body's dense blocks concatenating 192
    # channels that the estimate, which sees layer outputs only, does not count.
    memory_factor = 1.2
    memory_factor_in_stages = 3.5
    # An architecture's chain for a reduced precision (x4plus in bf16), over the fp32 figure above: its
    # fp32 parts and their bf16 twins hold working memory side by side, and the sums stay in fp32
    # between them; x4plus in one window: 0.76 GB at 384² and 1.28 GB at 512², against fp32's 0.61 GB at
    # 384² (a 1024×768 ×2 job took 3.27 GB with bf16's windows sized as half of fp32's).
    memory_factor_reduced_chain = 1.4

    def available(self) -> bool:
        return openvino_module() is not None

    def supports(self, architecture: str) -> bool:
        return export.supports(architecture)

    def native_precisions(self) -> tuple[str, ...]:
        # bf16 is OpenVINO's default precision where the CPU computes it natively.
        return ("bf16",) * cpu.native_bf16() + ("fp16",) * cpu.native_fp16()

    def precision(self, asked: str, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> str:
        int8 = _int8()
        if int8.int8_network(loaded, self.cache(settings), asked, job_pixels) is not None:
            return "int8"
        return name_of(cpu_precision(asked, loaded.descriptor))

    def derived(self, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> list[Derived]:
        """The int8 version, from its record's speed-up over fp32, where ``auto`` would take it."""
        cache = self.cache(settings)
        version = _int8().int8_version(loaded, cache, "auto", job_pixels)  # one digest of the weights
        if version is None:
            return []
        record = version[1]
        difference = Difference(record.mean_levels, record.max_levels, record.psnr_db)
        return [Derived("int8", record.speedup, difference)]

    def make_runner(
        self, loaded: LoadedModel, precision: str, settings: RunnerSettings, seconds_per_pixel: float = 0.0
    ) -> Runner:
        cache = self.cache(settings)
        if precision == "int8":
            quantized = _int8()
            network = quantized.int8_network(loaded, cache, "int8")
            runner = OpenVinoRunner(loaded, cache, quantized.float_dtype(), int8=network)
        else:
            runner = OpenVinoRunner(loaded, cache, dtype_of(precision))
        if seconds_per_pixel:
            runner.expect(seconds_per_pixel)  # its progress moves from the first window on
        return runner


RUNTIME = OpenVino()
