"""What the engine needs to know about a network, independent of its architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ModelDescriptor:
    """Facts about a loaded network; the engine reads these instead of architecture names."""

    architecture: str
    scale: int
    in_channels: int
    out_channels: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    supports_half: bool = True
    supports_bf16: bool = True
    # Input sides must be a multiple of this (pixel-unshuffle needs even sides for x2).
    size_multiple: int = 1
    min_size: int = 1
    # Context in input pixels a tile needs on each side so that its centre equals the untiled result.
    tile_pad: int = 0
    # "supported"; "discouraged" (works, but the larger the tile the better: it uses the whole image);
    # "internal" (the network tiles by itself: it must see the whole image at once).
    tiling: str = "supported"


@dataclass
class LoadedModel:
    """A ready network (eval mode, fp32, CPU) with its descriptor."""

    module: torch.nn.Module
    descriptor: ModelDescriptor

    @property
    def scale(self) -> int:
        return self.descriptor.scale
