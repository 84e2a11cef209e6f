"""SRVGGNetCompact (Real-ESRGAN's compact models)'s facts: its names, a tile's context, its graph in
the runtime-neutral form, the runtimes it was verified on and what stays in float in its int8 version.

Key names are Real-ESRGAN's and spandrel's alike: ``body.N`` alternates 3×3 convolutions and PReLUs,
the last convolution makes ``scale``² sub-pixels per channel, and the input upscaled by nearest
neighbour is added to the pixel-shuffled result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from image_enhancer.architectures import graph as g
from image_enhancer.architectures.base import Architecture, FloatOperations


def graph(hp: dict[str, Any]) -> list[g.GraphStage]:
    """One stage: it works at the input's resolution up to the final pixel shuffle."""
    net = g.Graph()
    image = net.input()
    feat = image
    last = 2 * hp["num_conv"] + 2
    for index in range(0, last, 2):
        feat = net.prelu(f"body.{index + 1}", net.conv(f"body.{index}", feat))
    scale = hp["scale"]
    shuffled = net.pixel_shuffle(net.conv(f"body.{last}", feat), scale)
    net.add(shuffled, image if scale == 1 else net.upsample(image, scale))
    return [g.GraphStage(net)]


def read_graph(ops: Sequence[g.Op]) -> dict[str, Any] | None:
    """The hyperparameters of a compact graph read from files: its PReLUs tell it apart, the number of
    convolutions gives ``num_conv`` and the pixel shuffle the scale."""
    if not any(op.kind == g.PRELU for op in ops):
        return None
    shuffles = [op.factor for op in ops if op.kind == g.PIXEL_SHUFFLE]
    if len(shuffles) != 1:
        raise ValueError(f"{len(shuffles)} pixel shuffles where the compact network has one")
    return {"scale": int(shuffles[0]), "num_conv": sum(op.kind == g.CONV for op in ops) - 2}


def _hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    return {"num_feat": hp["num_feat"], "num_conv": hp["num_conv"]}


def _tile_pad(hp: dict[str, Any]) -> int:
    """Exact receptive-field radius: one pixel per 3×3 conv (first + num_conv + last)."""
    return hp["num_conv"] + 2


ARCHITECTURE = Architecture(
    "SRVGGNetCompact",
    spandrel_id="Compact",
    hyperparameters=_hyperparameters,
    tile_pad=_tile_pad,
    meta_built=True,
    graph=graph,
    read_graph=read_graph,
    verified_on=frozenset({"openvino"}),
    # int8 keeps the first convolution (it sees the picture: quantized, 0.1–0.3 levels more on
    # average) and the residual path (the input upscaled and added: in int8 the picture itself would be
    # rounded) in float. The last convolution is quantized with a scale per output channel (each a
    # sub-pixel of its own range): 0.03–0.06 levels more, the network 4–5 % faster (EPYC, 256²).
    int8_float=FloatOperations(
        first_convolution=True, last_convolution=False, kinds_after_last=(g.UPSAMPLE, g.ADD)
    ),
)
