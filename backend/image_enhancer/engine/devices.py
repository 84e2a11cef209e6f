"""Which compute devices exist, and which one (with which runtime) runs the network.

The devices are those the installed runtimes reach (``runtimes``): their GPUs and the CPU under each.
``auto`` picks the fastest available: a GPU (the registry's order), else the fastest CPU runtime for
this CPU (``runtimes.cpu_order``). A software GPU device (a rasteriser running on the CPU) is slower
than any CPU runtime, so ``auto`` never picks one; it can still be asked for by its key, which is how
tests reach it.
"""

from __future__ import annotations

import re

from image_enhancer import runtimes
from image_enhancer.engine.choices import RUNTIMES
from image_enhancer.runtimes.base import ComputeDevice
from image_enhancer.runtimes.cpu import cpu_name


def gpus() -> list[ComputeDevice]:
    """Every GPU the installed runtimes reach, software ones included."""
    return [device for runtime in runtimes.installed() for device in runtime.gpus()]


def preferred_cpu_runtime() -> str:
    """The fastest CPU runtime installed here."""
    return runtimes.cpu_order()[0].name


def cpu_devices() -> list[ComputeDevice]:
    """The CPU under each installed runtime, the fastest first."""
    name = cpu_name()
    return [ComputeDevice("cpu", runtime.name, name) for runtime in runtimes.cpu_order()]


def discover() -> list[ComputeDevice]:
    """Every device found, in the order ``auto`` prefers them (software GPU devices last)."""
    found = gpus()
    return [d for d in found if not d.software] + cpu_devices() + [d for d in found if d.software]


def choose_device(name: str = "auto", runtime: str = "auto") -> ComputeDevice:
    """The device for ``--device NAME`` (auto, cpu, cuda[:N], xpu[:N], mps, vulkan[:N]) and
    ``runtime`` (auto or a runtime's name); ValueError naming what exists when the request cannot be met."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu|vulkan)(:\d+)?", name):
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda[:N], xpu[:N], mps or vulkan[:N]"
        )
    if runtime != "auto" and not runtimes.get(runtime).available():
        package = runtimes.get(runtime).package
        raise ValueError(f"the {runtime} runtime was requested but is not installed (pip install {package})")
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
