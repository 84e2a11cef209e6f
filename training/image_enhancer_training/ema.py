"""Exponential moving average of a network's weights (the copy we validate and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `shadow = decay·shadow + (1 − decay)·weights` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, param in zip(self.shadow.state_dict().values(), model.state_dict().values(), strict=True):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(param.detach(), 1.0 - self.decay)
            else:
                shadow.copy_(param)
