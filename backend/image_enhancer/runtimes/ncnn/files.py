"""Faithful converter from Real-ESRGAN's ncnn `.param` + `.bin` files to standard state dicts.

The `.param` file is a text graph (one layer per line: type, name, inputs, outputs, `k=v` params);
the `.bin` file is the layers' weights back to back in graph order. A convolution stores its weight
behind a 4-byte tag (0x01306B47: float16, padded to 4 bytes; all zero: float32) and then its bias as
raw float32; a PReLU stores its slopes as raw float32. Nothing is re-quantised: float16 weights stay
float16 and float32 biases stay float32, so the converted network computes what ncnn computes.

The graph is checked against the two architectures Real-ESRGAN exports (RRDBNet x4 and
SRVGGNetCompact) and its convolutions are named in order; anything else is refused.

The format facts below are shared with ``export.py``, which writes the reverse direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from image_enhancer.weights.safe_load import WeightsError

PARAM_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
# ncnn activation_type 2 is leaky ReLU; its slope is the first value of param -23310.
LEAKY_RELU = "2"


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


def _activation(layer: Layer) -> str:
    """'' for none, 'lrelu0.2' for leaky ReLU with slope 0.2, else the raw ncnn description."""
    act = layer.params.get("9", "0")
    if act == "0":
        return ""
    if act == LEAKY_RELU:
        values = layer.params.get("-23310", "1,0").split(",")
        return f"lrelu{float(values[1]):g}"
    return f"act{act}"


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise WeightsError(f"ncnn graph is not a Real-ESRGAN network: {message}")


def _conv_entries(name: str, layer: Layer) -> dict[str, Tensor]:
    entries = {f"{name}.weight": layer.tensors[0]}
    _expect(len(layer.tensors) == 2, f"{layer.name} has no bias")
    entries[f"{name}.bias"] = layer.tensors[1]
    return entries


def _rrdbnet(layers: list[Layer]) -> dict[str, Tensor]:
    convs = [ly for ly in layers if ly.kind == "Convolution"]
    blocks, rest = divmod(len(convs) - 6, 15)
    _expect(rest == 0 and blocks > 0, f"{len(convs)} convolutions is not 1 + 15·blocks + 5")
    names = ["conv_first"]
    names += [f"body.{b}.rdb{r}.conv{c}" for b in range(blocks) for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    leaky = {"conv_up1", "conv_up2", "conv_hr"} | {n for n in names if n[-1] in "1234" and ".rdb" in n}
    state: dict[str, Tensor] = {}
    for name, layer in zip(names, convs, strict=True):
        want = "lrelu0.2" if name in leaky else ""
        _expect(_activation(layer) == want, f"{layer.name} ({name}) has activation {_activation(layer)!r}")
        state.update(_conv_entries(name, layer))
    for layer in layers:
        if layer.kind == "Eltwise":
            _expect(layer.params.get("-23301") == "2,2.000000e-01,1.000000e+00", f"{layer.name} coefficients")
        if layer.kind == "Interp":
            _expect(layer.params.get("0") == "1" and float(layer.params.get("1", "0")) == 2.0,
                    f"{layer.name} is not a nearest ×2 upsample")
    return state


def _srvgg(layers: list[Layer]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    index = 0
    shuffle = interp = None
    for layer in layers:
        if layer.kind == "Convolution":
            _expect(_activation(layer) == "", f"{layer.name} has a fused activation")
            state.update(_conv_entries(f"body.{index}", layer))
            index += 1
        elif layer.kind == "PReLU":
            state[f"body.{index}.weight"] = layer.tensors[0]
            index += 1
        elif layer.kind == "PixelShuffle":
            shuffle = int(layer.params.get("0", "1"))
        elif layer.kind == "Interp":
            _expect(interp is None and layer.params.get("0") == "1",
                    f"{layer.name} is not the single nearest upsample of the input (a post-resize "
                    "variant such as the x2/x3 graphs: convert the x4 graph instead)")
            interp = float(layer.params.get("1", "0"))
    _expect(shuffle is not None and interp == float(shuffle), "pixel shuffle and input upsample disagree")
    return state


_KNOWN = {
    "RRDBNet": {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"},
    "SRVGGNetCompact": {"Input", "Split", "Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp"},
}


def convert(param_text: str, bin_data: bytes) -> dict[str, Tensor]:
    """State dict (Real-ESRGAN names) for an ncnn graph; WeightsError if it is anything else."""
    layers = parse_param(param_text)
    _read_weights(layers, bin_data)
    kinds = {ly.kind for ly in layers}
    arch = "SRVGGNetCompact" if "PReLU" in kinds else "RRDBNet"
    unknown = kinds - _KNOWN[arch]
    _expect(not unknown, f"unexpected layer types {sorted(unknown)} for {arch}")
    for layer in layers:
        # Residual joins must be additions: BinaryOp type 0 is add, Eltwise type 1 is a weighted sum.
        if layer.kind == "BinaryOp":
            _expect(layer.params.get("0", "0") == "0", f"{layer.name} is not an addition")
        if layer.kind == "Eltwise":
            _expect(layer.params.get("0") == "1", f"{layer.name} is not a sum")
    return _srvgg(layers) if arch == "SRVGGNetCompact" else _rrdbnet(layers)


def convert_files(param_path: Path, bin_path: Path) -> dict[str, Tensor]:
    try:
        text = Path(param_path).read_text(encoding="ascii")
        data = Path(bin_path).read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"cannot read ncnn files {param_path.name} / {bin_path.name}: {exc}") from exc
    return convert(text, data)
