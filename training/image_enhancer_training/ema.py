"""Exponential moving average of a network's weights (the copy we validate and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `shadow = d·shadow + (1 − d)·weights` after every optimiser step.

    The decay warms up as d = min(decay, (1 + n) / (10 + n)) after n updates, so that short runs are
    not dominated by the random initial weights (0.999ⁿ forgets them only after thousands of steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.shadow.state_dict().values(), model.state_dict().values(), strict=True):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(param.detach(), weight)
            else:
                shadow.copy_(param)
        self.updates += 1
