"""RRDBNet (ESRGAN, Real-ESRGAN)'s facts: its key names, its hyperparameters' names and a tile's context,
where its tail splits off to run in strips, and its graph in the runtime-neutral form (``graph.py``).

Key names of ESRGAN-family state dicts: Real-ESRGAN's (our stored form) and spandrel's module's.

Real-ESRGAN names (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
`conv_last`) are what our weight files, caches and interpolation use. spandrel's ESRGAN module keeps
the original ESRGAN's sequential names (`model.0`, `model.1.sub.N.RDBK.convM.0`, …), so tensors are
renamed only when they go into or come out of a module, never in stored dicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from image_enhancer.architectures import graph as g
from image_enhancer.architectures.base import Architecture, Part, Sum

# Real-ESRGAN always has a ×4 trunk (×2 and ×1 models pixel-unshuffle their input first): two
# upsampling convs, then the HR conv and the last conv at fixed sequential positions.
_TAIL = {"conv_first": "model.0", "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8",
         "conv_last": "model.10"}
_TAIL_BACK = {v: k for k, v in _TAIL.items()}
_RDB = re.compile(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_BODY_END = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")


def is_real_esrgan(state_dict: dict[str, Tensor]) -> bool:
    return "conv_first.weight" in state_dict and "body.0.rdb1.conv1.weight" in state_dict


def _module_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Real-ESRGAN-named state dicts renamed for spandrel's module; other namings as they are."""
    return to_module_names(state_dict) if is_real_esrgan(state_dict) else state_dict


def to_module_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Real-ESRGAN names → spandrel's module names; unknown keys are kept so a strict load names them."""
    blocks = 1 + max(int(m.group(1)) for k in state_dict if (m := _RDB.match(k)))
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if m := _RDB.match(key):
            renamed[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{m.group(4)}"] = value
        elif module == "conv_body":
            renamed[f"model.1.sub.{blocks}.{leaf}"] = value
        elif module in _TAIL:
            renamed[f"{_TAIL[module]}.{leaf}"] = value
        else:
            renamed[key] = value
    return renamed


def to_real_esrgan_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """spandrel's module names of a Real-ESRGAN-shaped network (×4 trunk) → Real-ESRGAN names."""
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if m := _OLD_RDB.match(key):
            renamed[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif _OLD_BODY_END.match(key):
            renamed[f"conv_body.{leaf}"] = value
        elif module in _TAIL_BACK:
            renamed[f"{_TAIL_BACK[module]}.{leaf}"] = value
        else:
            raise ValueError(f"{key} has no Real-ESRGAN name (only ×4-trunk ESRGAN networks have them)")
    return renamed


#: Rows of context RRDBNet's tail needs: its receptive field is 1.25 body pixels (one 3×3 conv at ×2,
#: three at ×4; at ×8 less), so strips with 2 rows of context reproduce the whole tail exactly.
TAIL_HALO = 2


class Body(torch.nn.Module):
    """RRDBNet up to its upsampling tail: pixel-unshuffle (×2 and ×1 models), first conv and trunk."""

    def __init__(self, layers: torch.nn.Sequential, shuffle_factor: int) -> None:
        super().__init__()
        self.layers = layers
        self.shuffle_factor = shuffle_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_factor:
            x = torch.nn.functional.pixel_unshuffle(x, self.shuffle_factor)
        return self.layers(x)


def split_tail(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """spandrel's RRDBNet module as its body and its upsampling tail (from the first upsample on: 64
    channels at the output resolution, most of the memory, run in strips of ``TAIL_HALO``); None for a
    module of another layout."""
    layers = getattr(module, "model", None)
    upsampled = isinstance(layers, torch.nn.Sequential) and len(layers) > 2
    if upsampled and isinstance(layers[2], torch.nn.Upsample):
        return Body(layers[:2], getattr(module, "shuffle_factor", 0) or 0), layers[2:]
    return None


def _stages(module: torch.nn.Module) -> list[Part] | None:
    """Body, then the tail in strips: split off, a whole 512² image stays one window within 2.5 GB."""
    parts = split_tail(module)
    return None if parts is None else [Part(parts[0]), Part(parts[1], TAIL_HALO)]


#: RRDBNet's residual scaling: each dense block's and each RRDB's output is added as 0.2 × it + input.
RESIDUAL = (0.2, 1.0)
LEAKY_SLOPE = 0.2


class ScaledResidual(torch.nn.Module):
    """What one RRDB adds to its input: 0.2 × its three dense blocks' output."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        return b.RDB3(b.RDB2(b.RDB1(x))) * RESIDUAL[0]


def _reduced_precision_stages(module: torch.nn.Module) -> list[Part | Sum[Part]] | None:
    """The first conv in fp32, then each RRDB's residual and the trunk's shortcut summed in fp32, then
    the tail in strips. Measured on the evening-glow photo (128² crop, bf16 on an AVX512_BF16 EPYC):
    0.68 levels from fp32 whole; 0.58 with only the first conv in fp32; 0.52 with only the sums; 0.36
    with both, at 5% more time than whole (the picture's own values and the trunk both lose most in
    8 bits). A sixth of the blocks at each end also run in fp32 (4 + 4 of x4plus's 23): each block
    adds its share of the error, the first ones' carried furthest and the last ones' largest; on the
    photo's hardest windows (its centre, 48² and 96², bf16 emulated in PyTorch) 0.62 and 0.71 levels
    fell to 0.43 and 0.52, where one block at each end gave 0.52 and 0.62, and any one tail or inner
    block less."""
    parts = split_tail(module)
    trunk = getattr(module.model[1], "sub", None) if parts is not None else None
    if not isinstance(trunk, torch.nn.Sequential):
        return None
    blocks, conv_body = trunk[:-1], trunk[-1]
    if not all(hasattr(block, "RDB3") for block in blocks):
        return None
    body, tail = parts
    head = Body(body.layers[:1], body.shuffle_factor)
    edge = round(len(blocks) / 6)
    residuals = [
        Sum((Part(ScaledResidual(block), fp32=index < edge or index >= len(blocks) - edge),))
        for index, block in enumerate(blocks)
    ]
    return [Part(head, fp32=True), Sum((*residuals, Part(conv_body))), Part(tail, TAIL_HALO)]


def graph(hp: dict[str, Any]) -> list[g.GraphStage]:
    """Two stages: the body at the input's resolution (each block's output a checkpoint), then the ×4
    upsampling tail (in strips of rows)."""
    body = g.Graph()
    x = body.input()
    unshuffle = {4: 1, 2: 2, 1: 4}[hp["scale"]]
    if unshuffle > 1:
        x = body.pixel_unshuffle(x, unshuffle)
    feat = body.conv("conv_first", x)
    trunk = feat
    block_outputs = []
    for b in range(hp["num_block"]):
        block_in = trunk
        for r in (1, 2, 3):
            rdb_in, dense = trunk, [trunk]
            for c in range(1, 5):
                source = dense[0] if c == 1 else body.concat(*dense)
                dense.append(body.conv(f"body.{b}.rdb{r}.conv{c}", source, LEAKY_SLOPE))
            x5 = body.conv(f"body.{b}.rdb{r}.conv5", body.concat(*dense))
            trunk = body.weighted_sum((x5, rdb_in), RESIDUAL)
        trunk = body.weighted_sum((trunk, block_in), RESIDUAL)
        block_outputs.append(trunk)
    body.add(feat, body.conv("conv_body", trunk))

    tail = g.Graph()
    feat = tail.input()
    for up in ("conv_up1", "conv_up2"):
        feat = tail.conv(up, tail.upsample(feat, 2), LEAKY_SLOPE)
    tail.conv("conv_last", tail.conv("conv_hr", feat, LEAKY_SLOPE))
    # Every block's output a checkpoint: x4plus's 23 blocks take about 0.4 s each for a 256² window.
    return [g.GraphStage(body, checkpoints=tuple(block_outputs)), g.GraphStage(tail, TAIL_HALO)]


def read_graph(ops: Sequence[g.Op]) -> dict[str, Any] | None:
    """The hyperparameters of a Real-ESRGAN ×4 RRDBNet graph read from files (Real-ESRGAN's ncnn
    exports have no pixel-unshuffle): the number of blocks from the number of convolutions."""
    kinds = {op.kind for op in ops}
    if g.PRELU in kinds or g.PIXEL_UNSHUFFLE in kinds:
        return None
    convolutions = sum(op.kind == g.CONV for op in ops)
    blocks, rest = divmod(convolutions - 6, 15)
    if rest or blocks <= 0:
        raise ValueError(f"{convolutions} convolutions is not 1 + 15·blocks + 5")
    return {"scale": 4, "num_block": blocks}


def _is_real_esrgan_shaped(hp: dict[str, Any]) -> bool:
    """Real-ESRGAN's RRDBNet: a ×4 trunk (×2 and ×1 through pixel-unshuffle). Older ESRGAN layouts
    (×2/×8 trunks, ESRGAN+) keep spandrel's name and terms."""
    return hp["scale"] == 4 and not hp["plus"]


def _real_esrgan_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    # 32 growth channels, as in every published Real-ESRGAN model.
    return {"num_feat": hp["num_filters"], "num_block": hp["num_blocks"], "num_grow_ch": 32}


def _tile_pad(hp: dict[str, Any]) -> int:
    """The receptive field is hundreds of pixels, but its influence fades: measured on a photo with
    x4plus, a tile with 16 / 24 / 32 pixels of context differs from the untiled result by up to
    16 / 7 / 4 8-bit steps, and more context barely helps (5 steps at 48); the 6-block anime model is
    within 1 step at 32. Blending overlapping tiles hides the rest. Older layouts get the same."""
    return 32 * (hp["shuffle_factor"] or 1)


ARCHITECTURE = Architecture(
    "RRDBNet",
    spandrel_id="ESRGAN",
    claims=_is_real_esrgan_shaped,
    hyperparameters=_real_esrgan_hyperparameters,
    tile_pad=_tile_pad,
    meta_built=True,
    module_names=_module_names,
    stored_names=to_real_esrgan_names,
    graph=graph,
    read_graph=read_graph,
    split=_stages,
    reduced_precision_split=_reduced_precision_stages,
    verified_on=frozenset({"openvino"}),
)
#: The older ESRGAN layouts spandrel detects under the same id: its names and terms, no graph of ours.
ESRGAN = Architecture("ESRGAN", spandrel_id="ESRGAN", tile_pad=_tile_pad, meta_built=True)
