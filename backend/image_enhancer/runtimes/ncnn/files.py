"""Faithful converter from Real-ESRGAN's ncnn `.param` + `.bin` files to standard state dicts.

The `.param` file is a text graph (one layer per line: type, name, inputs, outputs, `k=v` params);
the `.bin` file is the layers' weights back to back in graph order. A convolution stores its weight
behind a 4-byte tag (0x01306B47: float16, padded to 4 bytes; all zero: float32) and then its bias as
raw float32; a PReLU stores its slopes as raw float32. Nothing is re-quantised: float16 weights stay
float16 and float32 biases stay float32, so the converted network computes what ncnn computes.

The graph is read into the runtime-neutral form (``architectures/graph.py``) and checked against the
graph of the architecture it is (Real-ESRGAN exports RRDBNet x4 and SRVGGNetCompact): the weighted
layers take that graph's tensor names in order, and their activations, the residual sums'
coefficients and the upsampling factors must be that graph's; anything else is refused.

The format facts below are shared with ``export.py``, which writes the reverse direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from image_enhancer import architectures
from image_enhancer.architectures import graph as g
from image_enhancer.weights.safe_load import WeightsError

PARAM_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
# ncnn activation_type 2 is leaky ReLU; its slope is the first value of param -23310.
LEAKY_RELU = "2"
#: The ncnn layer of each runtime-neutral operation.
LAYER_OF = {
    g.INPUT: "Input", g.CONV: "Convolution", g.PRELU: "PReLU", g.CONCAT: "Concat", g.ADD: "BinaryOp",
    g.WEIGHTED_SUM: "Eltwise", g.UPSAMPLE: "Interp", g.PIXEL_SHUFFLE: "PixelShuffle",
    g.PIXEL_UNSHUFFLE: "Reorg",
}
_OP_OF = {layer: kind for kind, layer in LAYER_OF.items()}


@dataclass
class Layer:
    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)


def parse_param(text: str) -> list[Layer]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise WeightsError(f"not an ncnn .param file (first line should be {PARAM_MAGIC})")
    try:
        layer_count = int(lines[1].split()[0])
        layers = []
        for line in lines[2:]:
            parts = line.split()
            kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
            inputs, outputs = parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]
            params = dict(p.split("=", 1) for p in parts[4 + n_in + n_out :])
            layers.append(Layer(kind, name, inputs, outputs, params))
    except (IndexError, ValueError) as exc:
        raise WeightsError(f"malformed ncnn .param file: {exc}") from exc
    if len(layers) != layer_count:
        raise WeightsError(f"ncnn .param declares {layer_count} layers but has {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise WeightsError(f"ncnn .bin is truncated while reading {what}")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def tagged(self, count: int, what: str) -> Tensor:
        tag = int(np.frombuffer(self.take(4, what), "<u4")[0])
        if tag == TAG_FP16:
            raw = self.take((count * 2 + 3) // 4 * 4, what)[: count * 2]
            return torch.from_numpy(np.frombuffer(raw, "<f2").copy())
        if tag == TAG_FP32:
            return self.raw_fp32(count, what)
        raise WeightsError(f"{what}: unsupported ncnn weight storage (tag 0x{tag:08X}; quantised?)")

    def raw_fp32(self, count: int, what: str) -> Tensor:
        return torch.from_numpy(np.frombuffer(self.take(count * 4, what), "<f4").copy())


def _read_weights(layers: list[Layer], data: bytes) -> None:
    reader = _BinReader(data)
    for layer in layers:
        if layer.kind == "Convolution":
            if layer.params.get("8", "0") != "0":
                raise WeightsError(f"{layer.name}: int8 convolutions are not supported")
            out_ch = int(layer.params["0"])
            kw = int(layer.params.get("1", "1"))
            kh = int(layer.params.get("11", str(kw)))
            size = int(layer.params["6"])
            if size % (out_ch * kw * kh):
                raise WeightsError(f"{layer.name}: weight size {size} does not fit {out_ch}×{kh}×{kw}")
            weight = reader.tagged(size, f"{layer.name} weight")
            layer.tensors.append(weight.reshape(out_ch, size // (out_ch * kw * kh), kh, kw))
            if layer.params.get("5", "0") == "1":
                layer.tensors.append(reader.raw_fp32(out_ch, f"{layer.name} bias"))
        elif layer.kind == "PReLU":
            layer.tensors.append(reader.raw_fp32(int(layer.params.get("0", "1")), f"{layer.name} slopes"))
    if reader.offset != len(data):
        raise WeightsError(
            f"ncnn .bin has {len(data) - reader.offset} bytes more than the .param graph describes"
        )


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise WeightsError(f"ncnn graph is not a Real-ESRGAN network: {message}")


def _op(layer: Layer) -> g.Op | None:
    """The layer as a runtime-neutral operation (its values and weights unnamed); None for a Split."""
    if layer.kind == "Split":
        return None
    _expect(layer.kind in _OP_OF, f"unexpected layer type {layer.kind}")
    kind, p = _OP_OF[layer.kind], layer.params
    if kind == g.CONV:
        act = p.get("9", "0")
        _expect(act in ("0", LEAKY_RELU), f"{layer.name} has activation type {act}")
        slope = float(p.get("-23310", "1,0").split(",")[1]) if act == LEAKY_RELU else None
        return g.Op(kind, (), layer.name, leaky_slope=slope)
    if kind == g.ADD:  # BinaryOp type 0 is add
        _expect(p.get("0", "0") == "0", f"{layer.name} is not an addition")
    if kind == g.WEIGHTED_SUM:  # Eltwise type 1 is a weighted sum, -23301 its count and coefficients
        _expect(p.get("0") == "1", f"{layer.name} is not a sum")
        coefficients = tuple(float(c) for c in p.get("-23301", "0").split(",")[1:])
        return g.Op(kind, (), layer.name, coefficients=coefficients)
    if kind == g.UPSAMPLE:
        _expect(p.get("0") == "1", f"{layer.name} is not a nearest upsample (a post-resize variant such "
                "as the x2/x3 graphs: convert the x4 graph instead)")
        _expect(p.get("1") == p.get("2"), f"{layer.name} upsamples rows and columns differently")
        return g.Op(kind, (), layer.name, factor=float(p.get("1", "0")))
    if kind in (g.PIXEL_SHUFFLE, g.PIXEL_UNSHUFFLE):
        return g.Op(kind, (), layer.name, factor=int(p.get("0", "1")))
    return g.Op(kind, (), layer.name)


def _expected(ops: list[g.Op]) -> list[g.Op]:
    """The operations of the known graph (its stages in turn) that ``ops`` should be."""
    for architecture in architectures.with_graphs():
        if architecture.graph is None or architecture.read_graph is None:
            continue
        try:
            hp = architecture.read_graph(ops)
        except ValueError as why:
            raise WeightsError(f"ncnn graph is not a Real-ESRGAN network: {why}") from None
        if hp is not None:
            return [op for stage in architecture.graph(hp) for op in stage.graph.ops]
    raise WeightsError("ncnn graph is not a Real-ESRGAN network: its layers fit no known graph")


def _of_kind(kind: str, ops: list[g.Op]) -> list[g.Op]:
    return [op for op in ops if op.kind == kind]


def _state(layers: list[Layer], ops: list[g.Op], expected: list[g.Op]) -> dict[str, Tensor]:
    """The weighted layers' tensors under the expected graph's names, the graph's facts checked."""
    weighted = [(layer, op) for layer, op in zip(layers, ops, strict=True) if op.kind in g.WEIGHTED]
    wanted = [op for op in expected if op.kind in g.WEIGHTED]
    _expect(len(weighted) == len(wanted), f"{len(weighted)} weighted layers, the graph has {len(wanted)}")
    state: dict[str, Tensor] = {}
    for (layer, op), want in zip(weighted, wanted, strict=True):
        _expect(op.kind == want.kind, f"{layer.name} is a {layer.kind} where {want.weights} is a {want.kind}")
        _expect(op.leaky_slope == want.leaky_slope,
                f"{layer.name} ({want.weights}) has leaky slope {op.leaky_slope}, not {want.leaky_slope}")
        state[f"{want.weights}.weight"] = layer.tensors[0]
        if op.kind == g.CONV:
            _expect(len(layer.tensors) == 2, f"{layer.name} has no bias")
            state[f"{want.weights}.bias"] = layer.tensors[1]
    for op in _of_kind(g.WEIGHTED_SUM, ops):
        _expect(any(op.coefficients == s.coefficients for s in _of_kind(g.WEIGHTED_SUM, expected)),
                f"{op.output} coefficients {op.coefficients}")
    factors = [op.factor for op in _of_kind(g.UPSAMPLE, ops)]
    _expect(factors == [op.factor for op in _of_kind(g.UPSAMPLE, expected)],
            f"upsampling by {factors} (a post-resize variant such as the x2/x3 graphs: convert the x4 graph "
            "instead)")
    _expect(not {op.kind for op in ops} - {op.kind for op in expected},
            f"unexpected operations {sorted({op.kind for op in ops} - {op.kind for op in expected})}")
    return state


def convert(param_text: str, bin_data: bytes) -> dict[str, Tensor]:
    """State dict (Real-ESRGAN names) for an ncnn graph; WeightsError if it is anything else."""
    layers = parse_param(param_text)
    _read_weights(layers, bin_data)
    try:
        pairs = [(layer, op) for layer in layers if (op := _op(layer)) is not None]
    except WeightsError:
        raise
    except (IndexError, ValueError) as exc:  # a parameter that is not a number
        raise WeightsError(f"malformed ncnn layer parameters: {exc}") from exc
    ops = [op for _, op in pairs]
    return _state([layer for layer, _ in pairs], ops, _expected(ops))


def convert_files(param_path: Path, bin_path: Path) -> dict[str, Tensor]:
    try:
        text = Path(param_path).read_text(encoding="ascii")
        data = Path(bin_path).read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"cannot read ncnn files {param_path.name} / {bin_path.name}: {exc}") from exc
    return convert(text, data)
