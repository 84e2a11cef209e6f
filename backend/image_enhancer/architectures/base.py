"""What an architecture file tells the loader and the runtimes: one ``Architecture`` per name the
descriptor carries. Every field is optional; an architecture without a file of its own has none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from image_enhancer.architectures.graph import GraphStage, Op

StateDict = dict[str, Tensor]
Item = TypeVar("Item")
Mapped = TypeVar("Mapped")


@dataclass(frozen=True)
class Part:
    """One network of a chain, for a runtime that converts modules."""

    module: nn.Module
    #: > 0: it works at the output resolution and runs in strips of rows with this much context.
    halo: int = 0
    #: Computed in fp32 whatever the job's precision (a small part whose error the rest carries on).
    fp32: bool = False


@dataclass(frozen=True)
class Sum(Generic[Item]):
    """A chain whose output is added to its own input, the sum kept in fp32 outside the runtime."""

    parts: tuple[Item | Sum[Item], ...]


def map_chain(
    chain: Sequence[Item | Sum[Item]], change: Callable[[Item], Mapped]
) -> list[Mapped | Sum[Mapped]]:
    """The same chain, each item changed (its sums kept)."""
    return [
        Sum(tuple(map_chain(item.parts, change))) if isinstance(item, Sum) else change(item) for item in chain
    ]


@dataclass(frozen=True)
class FloatOperations:
    """Which operations of an int8 version stay in float: the first convolution (it sees the picture
    itself), the last one (it makes the result's sub-pixels), and the operations of these kinds
    (``graph.py``'s) after the last convolution. The runtime may keep more (``openvino/int8.py``)."""

    first_convolution: bool
    last_convolution: bool
    kinds_after_last: tuple[str, ...]


@dataclass(frozen=True)
class Architecture:
    name: str  # the descriptor's ``architecture``
    #: The spandrel architecture id that detects it ("" when the descriptor keeps spandrel's class name).
    spandrel_id: str = ""
    #: Whether a network spandrel detected under ``spandrel_id`` is this one, from spandrel's
    #: hyperparameters (one spandrel id may hold several of ours); None: always.
    claims: Callable[[dict[str, Any]], bool] | None = None
    #: spandrel's hyperparameters under the names our files and tools use (beside the channels and the
    #: scale every descriptor lists); None: spandrel's own names.
    hyperparameters: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: Context in input pixels a tile needs for a seam-free result, from spandrel's hyperparameters;
    #: None: the engine's default.
    tile_pad: Callable[[dict[str, Any]], int] | None = None
    #: Its module holds no tensors outside its state dict, so it is built on the meta device and given
    #: the file's tensors (no random init to throw away).
    meta_built: bool = False
    #: A stored state dict under the module's names, where our files name tensors otherwise.
    module_names: Callable[[StateDict], StateDict] | None = None
    #: The module's state dict under the names our files use, where they differ.
    stored_names: Callable[[StateDict], StateDict] | None = None
    #: The runtime-neutral graph for these hyperparameters, as a chain of stages (``graph.py``); None
    #: when no runtime builds this architecture's networks itself.
    graph: Callable[[dict[str, Any]], list[GraphStage]] | None = None
    #: The hyperparameters of a graph read from a runtime's files (its operations in order, weights
    #: unnamed): None when the graph is not of this architecture, ValueError (why) when it looks like
    #: this architecture but fits none of its graphs.
    read_graph: Callable[[Sequence[Op]], dict[str, Any] | None] | None = None
    #: The network as a chain of stages, for a runtime that converts modules (a halo > 0: the stage works
    #: at the output resolution and runs in strips of rows); None: whole.
    split: Callable[[nn.Module], list[Part] | None] | None = None
    #: The network as a chain whose residual sums stay in fp32, for a runtime that computes in a
    #: reduced precision (bf16 keeps 8 bits: RRDBNet's trunk, rounded after each of its 23 blocks,
    #: drifted 0.7 levels from fp32 on a photo); None: ``split``'s chain in every precision.
    reduced_precision_split: Callable[[nn.Module], list[Part | Sum[Part]] | None] | None = None
    #: The runtimes (by name) that convert a traced module and were seen to run this architecture in
    #: its family test: such a runtime takes no other architecture (OpenVINO's compiler crashed the
    #: whole process on some).
    verified_on: frozenset[str] = frozenset()
    #: What stays in float in an int8 version; None: no int8 version was measured within the bound.
    int8_float: FloatOperations | None = None
