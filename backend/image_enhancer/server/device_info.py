"""What DescribeServer reports about the compute device: where the network runs, its name and memory."""

from __future__ import annotations

import os

import torch

from image_enhancer.engine.devices import ComputeDevice
from image_enhancer.engine.ncnn_runner import ncnn_module


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def describe_device(device: ComputeDevice) -> tuple[str, str, int]:
    """(device such as "cuda:0", "vulkan:1" or "cpu"; its name with the runtime, e.g.
    "AMD Radeon RX 7600 (vulkan:0, ncnn)"; memory in bytes, 0 when unknown)."""
    memory = _ram_bytes()
    if device.runtime == "pytorch" and device.key.startswith("cuda"):
        memory = torch.cuda.get_device_properties(device.torch_device).total_memory
    elif device.vulkan_index is not None:
        ncnn = ncnn_module()
        assert ncnn is not None  # a Vulkan device was found through it
        memory = ncnn.get_gpu_device(device.vulkan_index).get_heap_budget() << 20
    return device.key, device.describe(), memory
