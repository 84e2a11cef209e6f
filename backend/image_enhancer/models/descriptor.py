"""What the engine needs to know about a network, independent of its architecture."""

from __future__ import annotations

from collections.abc import Callable
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
    """A ready network (eval mode, fp32, CPU) with its descriptor. Its weights never change once loaded
    (another strength is another LoadedModel), so keys derived from them are computed once (``key``)."""

    module: torch.nn.Module
    descriptor: ModelDescriptor
    _keys: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def key(self, name: str, derive: Callable[[], str]) -> str:
        """The key ``name`` of this network, ``derive()`` the first time: a digest over the weights
        takes milliseconds, and every job asks for its keys."""
        if name not in self._keys:
            self._keys[name] = derive()
        return self._keys[name]

    @property
    def scale(self) -> int:
        return self.descriptor.scale
