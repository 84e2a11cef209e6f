"""A network's graph in a form no runtime owns: what an architecture file writes and a runtime that builds
its own networks (ncnn's `.param` + `.bin`) translates, so architectures never import a runtime.

A graph is a list of operations in execution order; each takes named values and makes one. The first
operation is the input and the last one's value is the output. Weighted operations name their tensors
by the state-dict prefix (``conv_first`` for ``conv_first.weight`` and ``conv_first.bias``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The operations a graph is made of.
INPUT = "input"
CONV = "conv"  # a convolution with bias, "same" padding, optionally a leaky ReLU fused after it
PRELU = "prelu"  # per-channel PReLU (``weights``.weight holds the slopes)
CONCAT = "concat"  # along channels
ADD = "add"
WEIGHTED_SUM = "weighted_sum"  # sum of the inputs times ``coefficients``
UPSAMPLE = "upsample"  # nearest neighbour by ``factor``
PIXEL_SHUFFLE = "pixel_shuffle"  # depth to space by ``factor``
PIXEL_UNSHUFFLE = "pixel_unshuffle"  # space to depth by ``factor`` (PyTorch's channel order)
KINDS = (INPUT, CONV, PRELU, CONCAT, ADD, WEIGHTED_SUM, UPSAMPLE, PIXEL_SHUFFLE, PIXEL_UNSHUFFLE)
#: The operations that carry tensors of the state dict.
WEIGHTED = (CONV, PRELU)


@dataclass(frozen=True)
class Op:
    kind: str
    inputs: tuple[str, ...]
    output: str
    weights: str = ""  # CONV, PRELU: the state-dict prefix of its tensors
    leaky_slope: float | None = None  # CONV: a leaky ReLU with this slope after it
    factor: float = 0  # UPSAMPLE, PIXEL_SHUFFLE, PIXEL_UNSHUFFLE
    coefficients: tuple[float, ...] = ()  # WEIGHTED_SUM


@dataclass
class Graph:
    """A builder: each method appends one operation and returns the name of the value it makes."""

    ops: list[Op] = field(default_factory=list)

    def _add(
        self,
        kind: str,
        inputs: tuple[str, ...],
        weights: str = "",
        leaky_slope: float | None = None,
        factor: float = 0,
        coefficients: tuple[float, ...] = (),
    ) -> str:
        output = f"b{len(self.ops) + 1}"
        self.ops.append(Op(kind, inputs, output, weights, leaky_slope, factor, coefficients))
        return output

    def input(self) -> str:
        return self._add(INPUT, ())

    def conv(self, weights: str, source: str, leaky_slope: float | None = None) -> str:
        return self._add(CONV, (source,), weights=weights, leaky_slope=leaky_slope)

    def prelu(self, weights: str, source: str) -> str:
        return self._add(PRELU, (source,), weights=weights)

    def concat(self, *sources: str) -> str:
        return self._add(CONCAT, sources)

    def add(self, first: str, second: str) -> str:
        return self._add(ADD, (first, second))

    def weighted_sum(self, sources: tuple[str, ...], coefficients: tuple[float, ...]) -> str:
        return self._add(WEIGHTED_SUM, sources, coefficients=coefficients)

    def upsample(self, source: str, factor: float) -> str:
        return self._add(UPSAMPLE, (source,), factor=factor)

    def pixel_shuffle(self, source: str, factor: int) -> str:
        return self._add(PIXEL_SHUFFLE, (source,), factor=factor)

    def pixel_unshuffle(self, source: str, factor: int) -> str:
        return self._add(PIXEL_UNSHUFFLE, (source,), factor=factor)

    @property
    def output(self) -> str:
        return self.ops[-1].output


@dataclass(frozen=True)
class GraphStage:
    """One network of a model's chain. ``halo`` > 0: it works at the output resolution and may run on
    strips of rows with that many rows of context each side (``runtimes/common.py``). ``checkpoints``:
    values, in execution order, a runtime that runs the stage in one call may compute one after another,
    looking at its job between them (progress, cancel): x4plus's body runs for seconds in one call."""

    graph: Graph
    halo: int = 0
    checkpoints: tuple[str, ...] = ()
