"""Whole-network tensor conversions that stay fast on a busy CPU."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def as_fp32(tensor: Tensor) -> Tensor:
    """A private fp32 CPU copy. NumPy does the cast: each of torch's small parallel casts can cost
    milliseconds on a CPU shared with other work, which adds up to seconds over a network's 700
    tensors, while NumPy's single-threaded cast takes microseconds."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in _NUMPY_FLOATS:
        return torch.from_numpy(tensor.numpy().astype(np.float32))
    return tensor.float()
