"""What DescribeServer reports about the compute device: its name and memory."""

from __future__ import annotations

import os
import platform

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def describe_device(device: torch.device) -> tuple[str, str, int]:
    """(device string such as "cuda:0", human name, memory in bytes; 0 when unknown)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        return f"cuda:{index}", properties.name, properties.total_memory
    if device.type == "mps":
        return "mps", f"Apple GPU ({platform.machine()})", _ram_bytes()
    return "cpu", f"{_cpu_name()} ({os.cpu_count() or 1} cores)", _ram_bytes()
