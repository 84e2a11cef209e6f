"""Score an existing pair on the "damaged" held-out crops without training: the card's artefact table
(PSNR-Y against the ground truth, blockiness on the JPEG grid, PSNR-Y against the reference's output)
for bicubic, the pair along its strength sweep and the reference, and a side-by-side sheet of crops.

    python -m image_enhancer_training.damage_report training/configs/ie-compact-x4-distill.toml \\
        --psnr weights/ie-compact-x4-psnr.safetensors --gan weights/ie-compact-x4-gan.safetensors \\
        --crops 16 --crop-size 448 --sheet weights/cards/ie-compact-x4-damaged.png

The photos, the reference and the scale come from the config (`export.evaluation`, `export.reference`);
the reference's outputs are kept in `--keep` and reused. Prints the Markdown section.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from image_enhancer.weights.interpolation import interpolate
from image_enhancer.weights.safe_load import load_state_dict

from .config import ConfigError, TrainConfig, expand_path, load_config
from .degradations import to_uint8
from .evaluation import (
    Reference,
    evaluate_held_out,
    held_out_sections,
    held_out_set,
    served_module,
)
from .validation import bicubic_upscale

CAPTION_HEIGHT = 16


def damaged_config(config: TrainConfig, crops: int, crop_size: int, strengths: list[float]) -> TrainConfig:
    """`config` with only the "damaged" held-out evaluation, on `crops` crops of `crop_size`²."""
    export = dataclasses.replace(
        config.export, evaluation_crops=crops, evaluation_crop_size=crop_size,
        evaluation_degradations=["damaged"], strengths=strengths, brisque=False,
    )
    return dataclasses.replace(config, export=export)


def sheet_columns(
    config: TrainConfig,
    states: dict[str, dict[str, Tensor]],
    reference: Reference | None,
    rows: int,
    strengths: Sequence[float] = (0.0, 0.5, 1.0),
) -> list[tuple[str, list[Tensor]]]:
    """(caption, outputs for the first `rows` damaged crops) per column: bicubic, ours at each
    strength, the reference, the ground truth."""
    data = held_out_set(config, "damaged")
    inputs = data.lr[:rows]
    cpu = torch.device("cpu")
    columns = [("bicubic", [bicubic_upscale(lr[None], data.scale)[0] for lr in inputs])]
    for strength in strengths:
        blend = served_module(interpolate(states["psnr"], states["gan"], strength))
        columns.append((f"ours, strength {strength:g}", data.run(blend, cpu, inputs)))
    if reference is not None:
        columns.append((reference.name, reference.outputs(inputs)))
    columns.append(("ground truth", data.hr[:rows]))
    return columns


def contact_sheet(columns: list[tuple[str, list[Tensor]]], tile: int) -> Image.Image:
    """The centre `tile`² of every image at 100 % (one output pixel per sheet pixel), one column per
    method, captioned."""
    rows = len(columns[0][1])
    sheet = Image.new("RGB", (tile * len(columns), CAPTION_HEIGHT + tile * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (caption, images) in enumerate(columns):
        draw.text((c * tile + 4, 2), caption, fill="black")
        for r, image in enumerate(images):
            h, w = image.shape[-2:]
            top, left = (h - tile) // 2, (w - tile) // 2
            crop = to_uint8(image[:, top : top + tile, left : left + tile]).permute(1, 2, 0).numpy()
            sheet.paste(Image.fromarray(crop), (c * tile, CAPTION_HEIGHT + r * tile))
    return sheet


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_enhancer_training.damage_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="training config naming the held-out photos and reference")
    parser.add_argument("--psnr", type=Path, required=True, help="the pair's faithful end (strength 0)")
    parser.add_argument("--gan", type=Path, required=True, help="the pair's sharp end (strength 1)")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=448, help="ground-truth crop side")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--keep", type=Path, default=Path("runs/damage-report/reference-outputs"))
    parser.add_argument("--sheet", type=Path, help="write the side-by-side sheet of damaged crops here")
    parser.add_argument("--sheet-rows", type=int, default=3)
    parser.add_argument("--sheet-strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--sheet-tile", type=int, default=160)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = damaged_config(load_config(args.config), args.crops, args.crop_size, args.strengths)
    except ConfigError as exc:
        print(f"damage_report: error: {exc}", file=sys.stderr)
        return 2
    states = {"psnr": load_state_dict(args.psnr), "gan": load_state_dict(args.gan)}
    labels = {"psnr": args.psnr.stem, "gan": args.gan.stem}
    reference = None
    if config.export.reference:
        reference = Reference(expand_path(config.export.reference), args.keep)
    results = evaluate_held_out(config, states, labels, reference)
    print("\n\n".join(held_out_sections(config, results, labels, reference)))
    if args.sheet is not None:
        columns = sheet_columns(config, states, reference, args.sheet_rows, args.sheet_strengths)
        contact_sheet(columns, args.sheet_tile).save(args.sheet, optimize=True)
        print(f"\nsheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
