"""Which compute devices exist, and which one (with which runtime) runs the network.

Runtimes: PyTorch (CUDA, which is also how ROCm builds show AMD GPUs, Intel XPU, Apple MPS, CPU),
OpenVINO (CPU) and ncnn (CPU, and Vulkan for AMD, Intel and NVIDIA GPUs on Windows, Linux and macOS).
``auto`` picks the fastest available: a PyTorch GPU, else a Vulkan GPU, else the fastest CPU runtime
for this CPU (``cpu_runtime_order``; bench/README.md has the figures). A software Vulkan
device (llvmpipe, lavapipe, SwiftShader) runs on the CPU slower than ncnn's CPU path, so ``auto``
never picks one; it can still be asked for by index (``vulkan:N``), which is how tests reach it.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from functools import cache

import torch

from image_enhancer.engine.choices import RUNTIMES
from image_enhancer.engine.ncnn_runner import ncnn_module
from image_enhancer.engine.openvino_runner import openvino_module

RUNTIME_NAMES = {"pytorch": "PyTorch", "openvino": "OpenVINO", "ncnn": "ncnn"}
# ncnn's GpuInfo.type(): 0 discrete, 1 integrated, 2 virtual, 3 CPU (a software rasteriser).
_VULKAN_CPU_TYPE = 3
_SOFTWARE_NAMES = re.compile(r"llvmpipe|lavapipe|swiftshader|softpipe", re.IGNORECASE)


@dataclass(frozen=True)
class ComputeDevice:
    """One place the network can run. ``key`` is what ``--device`` takes."""

    key: str  # "cuda:0", "xpu:0", "mps", "vulkan:0", "cpu"
    runtime: str  # "pytorch", "openvino" or "ncnn"
    name: str
    software: bool = False  # a Vulkan device that is really the CPU

    @property
    def torch_device(self) -> torch.device:
        """Where batches live: the GPU for PyTorch GPUs, else the CPU (ncnn takes CPU arrays)."""
        return torch.device(self.key) if self.runtime == "pytorch" else torch.device("cpu")

    @property
    def vulkan_index(self) -> int | None:
        return int(self.key.split(":")[1]) if self.key.startswith("vulkan:") else None

    def describe(self) -> str:
        where = "CPU" if self.key == "cpu" else self.key
        return f"{self.name} ({where}, {RUNTIME_NAMES[self.runtime]})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as the kernel lists them (x86 "flags", ARM "Features"); None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            lines = (line for line in cpuinfo if line.startswith(("flags", "Features")))
            return frozenset(next((line.split(":", 1)[1].split() for line in lines), []))
    except OSError:
        return None


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX): OpenVINO's default precision there."""
    flags = cpu_flags() or frozenset()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_fp16() -> bool:
    """Whether an ARM CPU has fp16 arithmetic (ARMv8.2 FP16: "fphp" and "asimdhp")."""
    flags = cpu_flags() or frozenset()
    return "fphp" in flags and "asimdhp" in flags


def cpu_features() -> str:
    """The CPU's vector and matrix extensions that decide which runtime and precision are fastest (a
    figure measured on one CPU says little of another without them)."""
    flags = cpu_flags()
    if flags is None:
        return "features unknown"
    named = [
        ("AVX2", "avx2"),
        ("AVX-512", "avx512f"),
        ("VNNI", "avx512_vnni"),
        ("AVX-512 BF16", "avx512_bf16"),
        ("AMX", "amx_tile"),
        ("NEON", "asimd"),
        ("FP16", "fphp"),
    ]
    return ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in named)


def torch_gpus() -> list[ComputeDevice]:
    found = []
    if torch.cuda.is_available():
        found += [
            ComputeDevice(f"cuda:{i}", "pytorch", torch.cuda.get_device_name(i))
            for i in range(torch.cuda.device_count())
        ]
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [
            ComputeDevice(f"xpu:{i}", "pytorch", xpu.get_device_name(i)) for i in range(xpu.device_count())
        ]
    if torch.backends.mps.is_available():
        found.append(ComputeDevice("mps", "pytorch", "Apple GPU (Metal)"))
    return found


def vulkan_gpus() -> list[ComputeDevice]:
    ncnn = ncnn_module()
    if ncnn is None:
        return []
    found = []
    for index in range(ncnn.get_gpu_count()):
        info = ncnn.get_gpu_info(index)
        name = info.device_name()
        software = info.type() == _VULKAN_CPU_TYPE or bool(_SOFTWARE_NAMES.search(name))
        found.append(ComputeDevice(f"vulkan:{index}", "ncnn", name, software=software))
    return found


def cpu_runtime_order() -> tuple[str, ...]:
    """The CPU runtimes, fastest first for this CPU (bench/README.md has the figures).

    x86: OpenVINO (x4plus 1.3–2× faster than PyTorch and ncnn on an AVX-512 Xeon, as fast as ncnn on an
    AVX2 EPYC); then PyTorch where oneDNN has AVX-512 kernels (1.2× faster than ncnn there), else ncnn
    (its Winograd kernels for AVX2). ARM: ncnn's hand-written NEON kernels first.
    """
    if platform.machine().lower() in ("arm64", "aarch64"):
        return ("ncnn", "openvino", "pytorch")
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return ("openvino", "pytorch", "ncnn")
    return ("openvino", "ncnn", "pytorch")


def installed_runtimes() -> set[str]:
    found = {"pytorch"}
    if openvino_module() is not None:
        found.add("openvino")
    if ncnn_module() is not None:
        found.add("ncnn")
    return found


def preferred_cpu_runtime() -> str:
    """The fastest CPU runtime installed here."""
    installed = installed_runtimes()
    return next(runtime for runtime in cpu_runtime_order() if runtime in installed)


def cpu_devices() -> list[ComputeDevice]:
    """The CPU under each installed runtime, the fastest first."""
    name = cpu_name()
    installed = installed_runtimes()
    return [ComputeDevice("cpu", runtime, name) for runtime in cpu_runtime_order() if runtime in installed]


def discover() -> list[ComputeDevice]:
    """Every device found, in the order ``auto`` prefers them (software Vulkan devices last)."""
    vulkan = vulkan_gpus()
    return (
        torch_gpus()
        + [d for d in vulkan if not d.software]
        + cpu_devices()
        + [d for d in vulkan if d.software]
    )


def choose_device(name: str = "auto", runtime: str = "auto") -> ComputeDevice:
    """The device for ``--device NAME`` (auto, cpu, cuda[:N], xpu[:N], mps, vulkan[:N]) and
    ``runtime`` (auto, pytorch, ncnn); ValueError naming what exists when the request cannot be met."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu|vulkan)(:\d+)?", name):
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda[:N], xpu[:N], mps or vulkan[:N]"
        )
    if runtime != "auto" and runtime not in installed_runtimes():
        raise ValueError(f"the {runtime} runtime was requested but is not installed (pip install {runtime})")
    found = discover()
    candidates = [d for d in found if runtime in ("auto", d.runtime)]
    if name == "auto":
        candidates = [d for d in candidates if not d.software]
    elif name in ("cuda", "xpu", "vulkan"):
        candidates = [d for d in candidates if d.key.startswith(f"{name}:") and not d.software]
    else:
        candidates = [d for d in candidates if d.key == name]
    if not candidates:
        listed = ", ".join(d.key + (" (software)" if d.software else "") for d in found)
        wanted = name if runtime == "auto" else f"{name} with the {runtime} runtime"
        raise ValueError(f"device {wanted} is not available here; found: {listed}")
    return candidates[0]
