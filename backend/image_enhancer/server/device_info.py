"""What DescribeServer reports about the compute device: where the network runs, its name and memory."""

from __future__ import annotations

import os

from image_enhancer import runtimes
from image_enhancer.runtimes.base import ComputeDevice


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def describe_device(device: ComputeDevice) -> tuple[str, str, int]:
    """(device such as "cuda:0", "vulkan:1" or "cpu"; its name with the runtime, e.g.
    "AMD Radeon RX 7600 (vulkan:0, ncnn)"; memory in bytes, 0 when unknown)."""
    memory = runtimes.get(device.runtime).device_memory(device)
    return device.key, device.describe(), _ram_bytes() if memory is None else memory
