"""Writes the ncnn `.param` + `.bin` of our known graphs straight from a state dict, cached by content.

ncnn's `.bin` is the layers' weights in graph order (format facts in ``files.py``), so for a graph
we know, any state dict with the canonical Real-ESRGAN names becomes an ncnn model without a
converter: official files, community files, our trained models and interpolated strength blends
alike. Weights are written as float32, so the runtime computes what PyTorch fp32 computes.

The graphs are the architectures' own, in the runtime-neutral form of ``architectures/graph.py``
(RRDBNet: ×4; ×2 and ×1 through ncnn's `Reorg`, which is pixel-unshuffle; SRVGGNetCompact); this
module only translates each operation into its ncnn layer. A graph may be a chain of stages, each its
own ncnn network with input blob `in0` and output `out0`: RRDBNet's ×4 tail (4% of its work, most of
its memory: 64 channels at the output resolution, which ncnn's Winograd kernels hold several times
over) runs in strips of rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from image_enhancer import architectures
from image_enhancer.architectures import graph as g
from image_enhancer.runtimes.base import UnsupportedGraphError
from image_enhancer.runtimes.ncnn.files import LAYER_OF, LEAKY_RELU, PARAM_MAGIC, TAG_FP32
from image_enhancer.weights import integrity
from image_enhancer.weights.integrity import write_atomically

INPUT, OUTPUT = "in0", "out0"
#: Bumped whenever the written graph changes, so cached files of an older layout are not reused.
EXPORT_VERSION = 2


@dataclass
class _Layer:
    kind: str
    inputs: list[str]
    outputs: list[str]
    params: str = ""
    data: bytes = b""


def _params(op: g.Op, state: dict[str, Tensor]) -> tuple[str, bytes]:
    """The ncnn layer parameters and weights of one operation."""
    if op.kind == g.CONV:
        weight = state[f"{op.weights}.weight"].float().contiguous()
        bias = state[f"{op.weights}.bias"].float().contiguous()
        out_ch, _in_ch, kh, kw = weight.shape
        params = f"0={out_ch} 1={kw} 11={kh} 4={kh // 2} 5=1 6={weight.numel()}"
        if op.leaky_slope is not None:
            params += f" 9={LEAKY_RELU} -23310=1,{op.leaky_slope:.6e}"
        return params, np.uint32(TAG_FP32).tobytes() + _fp32(weight) + _fp32(bias)
    if op.kind == g.PRELU:
        slopes = state[f"{op.weights}.weight"].float().contiguous()
        return f"0={slopes.numel()}", _fp32(slopes)
    if op.kind in (g.ADD, g.CONCAT, g.INPUT):
        return ("0=0" if op.kind == g.ADD else ""), b""  # BinaryOp type 0 is add
    if op.kind == g.WEIGHTED_SUM:  # Eltwise type 1 is a sum, -23301 its coefficients
        return f"0=1 -23301={len(op.coefficients)}," + ",".join(f"{c:.6e}" for c in op.coefficients), b""
    if op.kind == g.UPSAMPLE:  # Interp type 1 is nearest
        return f"0=1 1={op.factor:.6e} 2={op.factor:.6e}", b""
    if op.kind in (g.PIXEL_SHUFFLE, g.PIXEL_UNSHUFFLE):  # Reorg's mode 0: PyTorch's channel order
        return f"0={op.factor:g}", b""
    raise UnsupportedGraphError(f"ncnn has no layer for the operation {op.kind!r}")


def _layers(graph: g.Graph, state: dict[str, Tensor]) -> list[_Layer]:
    """The graph's operations as ncnn layers, its input and output blobs named ``INPUT`` and ``OUTPUT``."""
    names = {graph.ops[0].output: INPUT, graph.output: OUTPUT}
    layers = []
    for op in graph.ops:
        params, data = _params(op, state)
        inputs = [names.get(blob, blob) for blob in op.inputs]
        layers.append(_Layer(LAYER_OF[op.kind], inputs, [names.get(op.output, op.output)], params, data))
    return layers


def text_and_weights(layers: list[_Layer]) -> tuple[str, bytes]:
    """The `.param` text (a Split inserted after every blob used more than once) and the `.bin`."""
    uses = Counter(blob for layer in layers for blob in layer.inputs)
    split: list[_Layer] = []
    renamed: dict[str, list[str]] = {}
    for layer in layers:
        inputs = [renamed[blob].pop(0) if blob in renamed else blob for blob in layer.inputs]
        split.append(_Layer(layer.kind, inputs, layer.outputs, layer.params, layer.data))
        for blob in layer.outputs:
            if uses[blob] > 1:
                copies = [f"{blob}_{i}" for i in range(uses[blob])]
                split.append(_Layer("Split", [blob], copies))
                renamed[blob] = list(copies)
    blobs = {blob for layer in split for blob in layer.outputs}
    lines = [PARAM_MAGIC, f"{len(split)} {len(blobs)}"]
    for index, layer in enumerate(split):
        fields = [layer.kind, f"l{index}", str(len(layer.inputs)), str(len(layer.outputs))]
        fields += layer.inputs + layer.outputs + ([layer.params] if layer.params else [])
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n", b"".join(layer.data for layer in split)


def _fp32(tensor: Tensor) -> bytes:
    return tensor.detach().cpu().numpy().astype("<f4").tobytes()


@dataclass(frozen=True)
class Stage:
    """One ncnn network of a model's chain. ``halo`` > 0: the stage may run on strips of rows with
    that many rows of context each side (and must, for memory: it works at the output resolution).
    ``checkpoints``: blobs extracted one after another before the output (``GraphStage.checkpoints``)."""

    param: Path
    weights: Path
    halo: int
    checkpoints: tuple[str, ...] = ()


def supports(architecture: str) -> bool:
    return architectures.get(architecture).graph is not None


def export(
    state: dict[str, Tensor], architecture: str, hyperparameters: dict
) -> list[tuple[str, bytes, g.GraphStage]]:
    """The stages of a known architecture's ncnn graph: `.param` text, `.bin` bytes and the stage each."""
    graph = architectures.get(architecture).graph
    if graph is None:
        raise UnsupportedGraphError(f"no ncnn graph for {architecture}; it runs on the PyTorch runtime")
    try:
        stages = [(_layers(stage.graph, state), stage) for stage in graph(hyperparameters)]
    except KeyError as missing:
        # The graphs read Real-ESRGAN's canonical names; a module keeping its weights under other
        # names is run by PyTorch instead.
        raise UnsupportedGraphError(
            f"the {architecture} state dict has no {missing}; the ncnn graph needs Real-ESRGAN's names"
        ) from None
    return [(*text_and_weights(layers), stage) for layers, stage in stages]


def state_digest(state: dict[str, Tensor]) -> str:
    """The cache key of this state dict's ncnn files."""
    return integrity.state_digest(state, f"ncnn-export-{EXPORT_VERSION}")


def cached_export(
    state: dict[str, Tensor], architecture: str, hyperparameters: dict, cache_dir: Path
) -> list[Stage]:
    """The stages' `.param` and `.bin` for this state dict in ``cache_dir``, written on first use (an
    interpolated strength is a different content, so each strength gets its own files)."""
    if not supports(architecture):
        raise UnsupportedGraphError(f"no ncnn graph for {architecture}; it runs on the PyTorch runtime")
    digest = state_digest(state)
    # One line per stage: its halo, then its checkpoints. Written last: its presence means all are there.
    index = Path(cache_dir) / f"{digest}.stages"
    if not index.is_file():
        lines = []
        for number, (text, data, stage) in enumerate(export(state, architecture, hyperparameters)):
            write_atomically(Path(cache_dir) / f"{digest}.{number}.bin", data)
            write_atomically(Path(cache_dir) / f"{digest}.{number}.param", text.encode("ascii"))
            lines.append(" ".join([str(stage.halo), *stage.checkpoints]))
        write_atomically(index, "".join(f"{line}\n" for line in lines).encode("ascii"))
    stages = []
    for n, line in enumerate(index.read_text(encoding="ascii").splitlines()):
        halo, *checkpoints = line.split()
        param, weights = Path(cache_dir) / f"{digest}.{n}.param", Path(cache_dir) / f"{digest}.{n}.bin"
        stages.append(Stage(param, weights, int(halo), tuple(checkpoints)))
    return stages
