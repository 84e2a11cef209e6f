"""Writes the ncnn `.param` + `.bin` of our known graphs straight from a state dict, cached by content.

ncnn's `.bin` is the layers' weights in graph order (format facts in ``files.py``), so for a graph
we know, any state dict with the canonical Real-ESRGAN names becomes an ncnn model without a
converter: official files, community files, our trained models and interpolated strength blends
alike. Weights are written as float32, so the runtime computes what PyTorch fp32 computes.

Graphs: RRDBNet (x4; x2 and x1 through ncnn's `Reorg`, which is pixel-unshuffle) and
SRVGGNetCompact. A graph may be cut into stages, each its own ncnn network with input blob `in0` and
output `out0`: RRDBNet's ×4 tail (4% of its work, most of its memory: 64 channels at the output
resolution, which ncnn's Winograd kernels hold several times over) runs in strips of rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from image_enhancer.architectures import rrdbnet
from image_enhancer.runtimes.base import UnsupportedGraphError
from image_enhancer.runtimes.ncnn.files import LEAKY_RELU, PARAM_MAGIC, TAG_FP32
from image_enhancer.weights import integrity
from image_enhancer.weights.integrity import write_atomically

INPUT, OUTPUT = "in0", "out0"
#: Bumped whenever the written graph changes, so cached files of an older layout are not reused.
EXPORT_VERSION = 1


@dataclass
class _Layer:
    kind: str
    inputs: list[str]
    outputs: list[str]
    params: str = ""
    data: bytes = b""


@dataclass
class _Graph:
    layers: list[_Layer] = field(default_factory=list)
    _count: int = 0

    def add(self, kind: str, inputs: list[str], params: str = "", data: bytes = b"", out: str = "") -> str:
        self._count += 1
        output = out or f"b{self._count}"
        self.layers.append(_Layer(kind, inputs, [output], params, data))
        return output

    def conv(
        self, state: dict[str, Tensor], name: str, source: str, leaky: bool = False, out: str = ""
    ) -> str:
        weight = state[f"{name}.weight"].float().contiguous()
        bias = state[f"{name}.bias"].float().contiguous()
        out_ch, _in_ch, kh, kw = weight.shape
        params = f"0={out_ch} 1={kw} 11={kh} 4={kh // 2} 5=1 6={weight.numel()}"
        if leaky:
            params += f" 9={LEAKY_RELU} -23310=1,2.000000e-01"
        data = np.uint32(TAG_FP32).tobytes() + _fp32(weight) + _fp32(bias)
        return self.add("Convolution", [source], params, data, out)

    def text_and_weights(self) -> tuple[str, bytes]:
        """The `.param` text (a Split inserted after every blob used more than once) and the `.bin`."""
        uses = Counter(blob for layer in self.layers for blob in layer.inputs)
        layers: list[_Layer] = []
        renamed: dict[str, list[str]] = {}
        for layer in self.layers:
            inputs = [renamed[blob].pop(0) if blob in renamed else blob for blob in layer.inputs]
            layers.append(_Layer(layer.kind, inputs, layer.outputs, layer.params, layer.data))
            for blob in layer.outputs:
                if uses[blob] > 1:
                    copies = [f"{blob}_{i}" for i in range(uses[blob])]
                    layers.append(_Layer("Split", [blob], copies))
                    renamed[blob] = list(copies)
        blobs = {blob for layer in layers for blob in layer.outputs}
        lines = [PARAM_MAGIC, f"{len(layers)} {len(blobs)}"]
        for index, layer in enumerate(layers):
            fields = [layer.kind, f"l{index}", str(len(layer.inputs)), str(len(layer.outputs))]
            fields += layer.inputs + layer.outputs + ([layer.params] if layer.params else [])
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n", b"".join(layer.data for layer in layers)


def _fp32(tensor: Tensor) -> bytes:
    return tensor.detach().cpu().numpy().astype("<f4").tobytes()


def _rrdbnet(state: dict[str, Tensor], hp: dict) -> list[tuple[_Graph, int]]:
    """Two stages: the body at the input's resolution, then the ×4 upsampling tail (in strips)."""
    g = _Graph()
    x = g.add("Input", [], out=INPUT)
    unshuffle = {4: 1, 2: 2, 1: 4}[hp["scale"]]
    if unshuffle > 1:
        x = g.add("Reorg", [x], f"0={unshuffle}")  # mode 0: PyTorch's pixel_unshuffle channel order
    feat = g.conv(state, "conv_first", x)
    body = feat
    for b in range(hp["num_block"]):
        block_in = body
        for r in (1, 2, 3):
            rdb_in, dense = body, [body]
            for c in range(1, 5):
                source = dense[0] if c == 1 else g.add("Concat", list(dense))
                dense.append(g.conv(state, f"body.{b}.rdb{r}.conv{c}", source, leaky=True))
            x5 = g.conv(state, f"body.{b}.rdb{r}.conv5", g.add("Concat", list(dense)))
            body = g.add("Eltwise", [x5, rdb_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        body = g.add("Eltwise", [body, block_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    g.add("BinaryOp", [feat, g.conv(state, "conv_body", body)], "0=0", out=OUTPUT)

    tail = _Graph()
    feat = tail.add("Input", [], out=INPUT)
    for up in ("conv_up1", "conv_up2"):
        upsampled = tail.add("Interp", [feat], "0=1 1=2.000000e+00 2=2.000000e+00")
        feat = tail.conv(state, up, upsampled, leaky=True)
    feat = tail.conv(state, "conv_hr", feat, leaky=True)
    tail.conv(state, "conv_last", feat, out=OUTPUT)
    return [(g, 0), (tail, rrdbnet.TAIL_HALO)]


def _srvgg(state: dict[str, Tensor], hp: dict) -> list[tuple[_Graph, int]]:
    g = _Graph()
    image = g.add("Input", [], out=INPUT)
    feat = image
    last = 2 * hp["num_conv"] + 2
    for index in range(0, last, 2):
        feat = g.conv(state, f"body.{index}", feat)
        slopes = state[f"body.{index + 1}.weight"].float().contiguous()
        feat = g.add("PReLU", [feat], f"0={slopes.numel()}", _fp32(slopes))
    scale = hp["scale"]
    shuffled = g.add("PixelShuffle", [g.conv(state, f"body.{last}", feat)], f"0={scale}")
    if scale == 1:
        g.add("BinaryOp", [shuffled, image], "0=0", out=OUTPUT)
    else:
        base = g.add("Interp", [image], f"0=1 1={scale:.6e} 2={scale:.6e}")
        g.add("BinaryOp", [shuffled, base], "0=0", out=OUTPUT)
    return [(g, 0)]


_GRAPHS = {"RRDBNet": _rrdbnet, "SRVGGNetCompact": _srvgg}


@dataclass(frozen=True)
class Stage:
    """One ncnn network of a model's chain. ``halo`` > 0: the stage may run on strips of rows with
    that many rows of context each side (and must, for memory: it works at the output resolution)."""

    param: Path
    weights: Path
    halo: int


def supports(architecture: str) -> bool:
    return architecture in _GRAPHS


def export(
    state: dict[str, Tensor], architecture: str, hyperparameters: dict
) -> list[tuple[str, bytes, int]]:
    """The stages of a known architecture's ncnn graph: `.param` text, `.bin` bytes and halo each."""
    if architecture not in _GRAPHS:
        raise UnsupportedGraphError(f"no ncnn graph for {architecture}; it runs on the PyTorch runtime")
    try:
        stages = _GRAPHS[architecture](state, hyperparameters)
    except KeyError as missing:
        # The graphs read Real-ESRGAN's canonical names; a module keeping its weights under other
        # names is run by PyTorch instead.
        raise UnsupportedGraphError(
            f"the {architecture} state dict has no {missing}; the ncnn graph needs Real-ESRGAN's names"
        ) from None
    return [(*graph.text_and_weights(), halo) for graph, halo in stages]


def state_digest(state: dict[str, Tensor]) -> str:
    """The cache key of this state dict's ncnn files."""
    return integrity.state_digest(state, f"ncnn-export-{EXPORT_VERSION}")


def cached_export(
    state: dict[str, Tensor], architecture: str, hyperparameters: dict, cache_dir: Path
) -> list[Stage]:
    """The stages' `.param` and `.bin` for this state dict in ``cache_dir``, written on first use (an
    interpolated strength is a different content, so each strength gets its own files)."""
    if architecture not in _GRAPHS:
        raise UnsupportedGraphError(f"no ncnn graph for {architecture}; it runs on the PyTorch runtime")
    digest = state_digest(state)
    index = Path(cache_dir) / f"{digest}.stages"  # written last: its presence means all stages are there
    if not index.is_file():
        halos = []
        for number, (text, data, halo) in enumerate(export(state, architecture, hyperparameters)):
            write_atomically(Path(cache_dir) / f"{digest}.{number}.bin", data)
            write_atomically(Path(cache_dir) / f"{digest}.{number}.param", text.encode("ascii"))
            halos.append(str(halo))
        write_atomically(index, (" ".join(halos) + "\n").encode("ascii"))
    halos = [int(h) for h in index.read_text(encoding="ascii").split()]
    return [
        Stage(Path(cache_dir) / f"{digest}.{n}.param", Path(cache_dir) / f"{digest}.{n}.bin", halo)
        for n, halo in enumerate(halos)
    ]
