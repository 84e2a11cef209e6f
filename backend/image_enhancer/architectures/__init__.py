"""Facts about an architecture that the runtimes and the model loader share, one file per architecture
(the networks themselves come from spandrel): our name for it and for its hyperparameters, a tile's
context, key names, where a network splits into stages and the halo of a stage run in strips, its
graph in a runtime-neutral form (``graph.py``), the runtimes it was verified on, what stays in float
in its int8 version (``base.Architecture``). The loader and the runtimes ask this registry instead of
testing architecture names; nothing here imports a runtime or the loader."""

from __future__ import annotations

from typing import Any

from torch import nn

from image_enhancer.architectures import rrdbnet, span, srvgg_compact
from image_enhancer.architectures.base import Architecture, Part

#: Every architecture with facts of its own, in the order they are matched (a spandrel id's first
#: claimant wins; a graph read from files goes to the first that reads it).
ALL: tuple[Architecture, ...] = (
    rrdbnet.ARCHITECTURE, rrdbnet.ESRGAN, srvgg_compact.ARCHITECTURE, span.ARCHITECTURE
)


def _by_name(architectures: tuple[Architecture, ...]) -> dict[str, Architecture]:
    found: dict[str, Architecture] = {}
    for architecture in architectures:
        if architecture.name in found:
            raise ValueError(f"two architectures are named {architecture.name!r}")
        found[architecture.name] = architecture
    return found


_BY_NAME = _by_name(ALL)


def get(name: str) -> Architecture:
    """The facts of the architecture ``name``; one without a file of its own has none."""
    return _BY_NAME.get(name) or Architecture(name)


def for_spandrel(spandrel_id: str, hyperparameters: dict[str, Any]) -> Architecture | None:
    """The architecture a network spandrel detected as ``spandrel_id`` is, from spandrel's
    hyperparameters; None when it has no facts of ours (it keeps spandrel's class name)."""
    for architecture in ALL:
        if architecture.spandrel_id == spandrel_id and (
            architecture.claims is None or architecture.claims(hyperparameters)
        ):
            return architecture
    return None


def meta_built(spandrel_id: str) -> bool:
    """Whether networks spandrel detects as ``spandrel_id`` are built on the meta device."""
    return any(a.meta_built for a in ALL if a.spandrel_id == spandrel_id)


def with_graphs() -> list[Architecture]:
    """The architectures whose runtime-neutral graph is known, in registry order."""
    return [architecture for architecture in ALL if architecture.graph is not None]


def stages(module: nn.Module, architecture: str) -> list[Part]:
    """The network as the chain of stages its architecture splits it into (RRDBNet: its body, then its
    tail in strips); any other network whole."""
    splitter = get(architecture).split
    parts = splitter(module) if splitter is not None else None
    return [Part(module)] if parts is None else parts
