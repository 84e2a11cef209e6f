"""The ncnn runtime: the CPU, and Vulkan for AMD, Intel and NVIDIA GPUs on Windows, Linux and macOS.
A software Vulkan device (llvmpipe, lavapipe, SwiftShader) runs on the CPU slower than ncnn's CPU
path, so ``auto`` never picks one; it can still be asked for by index (``vulkan:N``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from image_enhancer.runtimes import cpu
from image_enhancer.runtimes.base import ComputeDevice, Runner, RunnerSettings, Runtime
from image_enhancer.runtimes.ncnn import export
from image_enhancer.runtimes.ncnn.runner import NcnnRunner, ncnn_module

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

# ncnn's GpuInfo.type(): 0 discrete, 1 integrated, 2 virtual, 3 CPU (a software rasteriser).
_VULKAN_CPU_TYPE = 3
_SOFTWARE_NAMES = re.compile(r"llvmpipe|lavapipe|swiftshader|softpipe", re.IGNORECASE)


def vulkan_index(device: ComputeDevice) -> int | None:
    """The Vulkan device's index, or None for the CPU."""
    return device.index if device.key.startswith("vulkan:") else None


class Ncnn(Runtime):
    name = "ncnn"
    display_name = "ncnn"
    package = "ncnn"
    # Winograd keeps transformed copies of a layer's input and output. Measured peak RSS over the
    # loaded model, with our pools: compact model 640 MiB at 512² and 2136 MiB at 1024² (estimates 240
    # and 960: 2.7× and 2.2×).
    memory_factor = 2.8
    # A chain in stages (x4plus): its first stage over the window, the last in strips (``common``). One
    # window of x4plus held 376, 533, 775 and 1206 MB over the loaded model at 128², 192², 256² and
    # 320²: about 243 MB for the tail's strip whatever the window (4.75× the last stage's estimate,
    # 12480 bytes per pixel, over 4096 pixels), and for the body 7.7 to 11.7 kB per pixel added (its
    # estimate is 1024), the more the larger the window.
    memory_factor_in_stages = 10.0
    memory_factor_strip = 5.0

    def available(self) -> bool:
        return ncnn_module() is not None

    def gpus(self) -> list[ComputeDevice]:
        ncnn = ncnn_module()
        if ncnn is None:
            return []
        found = []
        for index in range(ncnn.get_gpu_count()):
            info = ncnn.get_gpu_info(index)
            name = info.device_name()
            software = info.type() == _VULKAN_CPU_TYPE or bool(_SOFTWARE_NAMES.search(name))
            found.append(ComputeDevice(f"vulkan:{index}", self.name, name, software=software))
        return found

    def device_memory(self, device: ComputeDevice) -> int | None:
        index = vulkan_index(device)
        ncnn = ncnn_module()
        if index is None or ncnn is None:
            return None
        return ncnn.get_gpu_device(index).get_heap_budget() << 20

    def supports(self, architecture: str) -> bool:
        return export.supports(architecture)

    def native_precisions(self) -> tuple[str, ...]:
        return ("fp16",) if cpu.native_fp16() else ()

    def precision(self, asked: str, settings: RunnerSettings, loaded: LoadedModel, job_pixels: int) -> str:
        """fp32 on the CPU (x86 gains nothing from fp16; results stay within 1/255 of PyTorch); fp16
        storage on a Vulkan GPU (half the memory traffic, still within one 8-bit level); fp16
        arithmetic only when asked for."""
        half_ok = loaded.descriptor.supports_half and asked in ("auto", "fp16")
        if not half_ok or vulkan_index(settings.device) is None and asked != "fp16":
            return "fp32"
        return "fp16" if asked == "fp16" else "fp16-storage"

    def make_runner(
        self, loaded: LoadedModel, precision: str, settings: RunnerSettings, seconds_per_pixel: float = 0.0
    ) -> Runner:
        return NcnnRunner(loaded, self.cache(settings), vulkan_index(settings.device), precision)


RUNTIME = Ncnn()
