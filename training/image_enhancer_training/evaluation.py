"""Held-out evaluation for the model card: whole photos never trained on, one table per degradation
(bicubic, the training degradations on every image, and a fixed "damaged" mix of blur, camera noise
and JPEG scored for artefacts too: blockiness on the JPEG grid, mesh on the input's pixel grid and
PSNR-Y against the reference's output), optionally a reference model and BRISQUE,
the strength sweep as (PSNR-Y, BRISQUE) against bicubic and the reference, and the speed of our PSNR
model against the reference measured in the same run.

A large reference such as x4plus takes tens of seconds per photo on a CPU, so its outputs are kept in
the run folder (keyed by the reference file and the input's bytes) and reused when the card is
written again; its speed is measured afresh every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from image_enhancer.models.registry import load_model
from image_enhancer.weights.integrity import write_atomically
from image_enhancer.weights.interpolation import interpolate
from image_enhancer.weights.safe_load import load_state_dict

from .config import TrainConfig, ValidationConfig, expand_path
from .curves import save_chart
from .degradations import CameraParams, DegradationConfig, to_uint8
from .metrics import blockiness, brisque, mesh, psnr_y_against
from .validation import Scores, ValidationSet, bicubic_upscale

DEGRADATION_TITLES = {
    "bicubic": "bicubic ×{scale} downscale",
    "train": "the training degradations on every photo (blur, resize, noise, JPEG; fixed seed)",
    "damaged": "damaged ×{scale} (mild blur, camera noise, JPEG q 30–90; fixed seed)",
}

#: The "damaged" evaluation: what photos people upscale carry — mild blur, camera noise in luma and
#: chroma, JPEG q 30–90 with 4:2:0 chroma — at the input size, so the JPEG grid lands on the input's.
DAMAGED = DegradationConfig(
    pipeline="camera",
    camera=CameraParams(
        blur_prob=1.0, blur_sigma=(0.3, 1.0), resize_steps=(1, 1), noise_prob=1.0, read_noise=(1.0, 3.0),
        shot_noise=(3.0, 8.0), chroma_noise=(0.5, 1.5), jpeg_prob=1.0, jpeg_quality=(30, 90),
        subsampling_probs={"4:2:0": 1.0}, double_jpeg_prob=0.0,
    ),
)


@dataclass
class Row:
    label: str
    scores: Scores
    brisque: float | None = None
    blockiness: float | None = None  # mean over the photos, on the input's JPEG grid
    mesh: float | None = None  # mean over the photos, on the input's pixel grid
    vs_reference: float | None = None  # PSNR-Y (dB) against the reference's output, same inputs


@dataclass
class HeldOutResult:
    degradation: str
    images: int
    rows: list[Row]
    first_input: Tensor  # the first photo's LR input, for the speed measurement
    sweep: list[tuple[float, Row]] = field(default_factory=list)
    # The ground truths' blockiness and mesh on the same grids ("damaged" only).
    originals: tuple[float, float | None] | None = None

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


def held_out_set(config: TrainConfig, degradation: str) -> ValidationSet:
    ex = config.export
    vcfg = ValidationConfig(
        sources=ex.evaluation, crops=ex.evaluation_crops, crop_size=ex.evaluation_crop_size,
        degradation="bicubic" if degradation == "bicubic" else "train",
    )
    damage = DAMAGED if degradation == "damaged" else dataclasses.replace(config.degradation, clean_prob=0.0)
    return ValidationSet(vcfg, config.model.scale, config.seed + 1, damage)


def mean_blockiness(outputs: list[Tensor], scale: int) -> float:
    return sum(blockiness(o, scale) for o in outputs) / len(outputs)


def mean_mesh(outputs: list[Tensor], scale: int) -> float:
    return sum(mesh(o, scale) for o in outputs) / len(outputs)


def mean_psnr_against(outputs: list[Tensor], references: list[Tensor], border: int) -> float:
    pairs = zip(outputs, references, strict=True)
    return sum(psnr_y_against(o, r, border) for o, r in pairs) / len(outputs)


def add_artefacts(
    row: Row, outputs: list[Tensor], data: ValidationSet, reference: list[Tensor] | None
) -> Row:
    """Fill in the row's blockiness, its mesh (scale ≥ 2) and, given the reference's outputs, its
    PSNR-Y against them."""
    row.blockiness = mean_blockiness(outputs, data.scale)
    row.mesh = mean_mesh(outputs, data.scale) if data.scale > 1 else None
    if reference is not None:
        row.vs_reference = mean_psnr_against(outputs, reference, data.scale)
    return row


def served_module(state: dict[str, Tensor]) -> nn.Module:
    """The network the engine serves for these (possibly fp16) weights, in fp32."""
    return load_model({k: v.float() for k, v in state.items()}).module


def _png(image: Tensor) -> bytes:
    array = to_uint8(image).permute(1, 2, 0).numpy()
    encoded = io.BytesIO()
    Image.fromarray(array).save(encoded, format="PNG")
    return encoded.getvalue()


def _from_png(path: Path) -> Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1) / 255.0


class Reference:
    """The reference model and its kept outputs."""

    def __init__(self, path: Path, keep_dir: Path) -> None:
        self.path = path
        self.name = path.stem
        self.module = load_model(load_state_dict(path)).module.eval()
        self.keep_dir = keep_dir
        self.key = f"{path.name}:{path.stat().st_size}".encode()

    @torch.no_grad()
    def outputs(self, inputs: list[Tensor]) -> list[Tensor]:
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for lr in inputs:
            quantised = to_uint8(lr)
            digest = hashlib.sha256(self.key + str(tuple(lr.shape)).encode() + quantised.numpy().tobytes())
            kept = self.keep_dir / f"{digest.hexdigest()[:24]}.png"
            if not kept.is_file():
                write_atomically(kept, _png(self.module(lr[None]).clamp(0, 1)[0]))
            results.append(_from_png(kept))
        return results


def _row(
    label: str,
    outputs: list[Tensor],
    data: ValidationSet,
    with_brisque: bool,
    artefacts: bool = False,
    reference: list[Tensor] | None = None,
) -> Row:
    score = sum(brisque(o) for o in outputs) / len(outputs) if with_brisque else None
    row = Row(label, data.score_outputs(outputs), score)
    return add_artefacts(row, outputs, data, reference) if artefacts else row


def evaluate_held_out(
    config: TrainConfig,
    states: dict[str, dict[str, Tensor]],
    labels: dict[str, str],
    reference: Reference | None,
) -> list[HeldOutResult]:
    """One result per configured degradation: bicubic, our models (and the sweep), the reference."""
    ex = config.export
    cpu = torch.device("cpu")
    results = []
    for degradation in ex.evaluation_degradations:
        data = held_out_set(config, degradation)
        artefacts = degradation == "damaged"
        ref_outputs = None
        if reference is not None and (artefacts or degradation in ex.reference_degradations):
            ref_outputs = reference.outputs(data.lr)
        scoring = {"data": data, "artefacts": artefacts, "reference": ref_outputs}
        bicubic = [bicubic_upscale(lr[None], data.scale)[0] for lr in data.lr]
        rows = [_row("bicubic", bicubic, with_brisque=ex.brisque, **scoring)]
        for kind, state in states.items():
            outputs = data.run(served_module(state), cpu)
            rows.append(_row(labels[kind], outputs, with_brisque=ex.brisque, **scoring))
        if reference is not None and ref_outputs is not None:
            rows.append(_row(reference.name, ref_outputs, with_brisque=ex.brisque, **scoring))
        result = HeldOutResult(degradation, len(data.hr), rows, data.lr[0])
        if (ex.brisque or artefacts) and "gan" in states:
            ends = {0.0: rows[1], 1.0: rows[2]}
            for strength in ex.strengths:
                if strength not in ends:
                    blend = served_module(interpolate(states["psnr"], states["gan"], strength))
                    outputs = data.run(blend, cpu)
                    ends[strength] = _row(f"{strength:g}", outputs, with_brisque=ex.brisque, **scoring)
                result.sweep.append((strength, ends[strength]))
        if artefacts:
            ground_mesh = mean_mesh(data.hr, data.scale) if data.scale > 1 else None
            result.originals = (mean_blockiness(data.hr, data.scale), ground_mesh)
        results.append(result)
    return results


def measure_speed(
    state: dict[str, Tensor], reference: Reference, photo: Tensor, repeats: int = 3
) -> tuple[float, float, tuple[int, int]]:
    """Seconds for our model and the reference on one held-out LR input (3, H, W), in this run."""
    lr = photo[None]
    ours = served_module(state).eval()

    def seconds(module: nn.Module, runs: int) -> float:
        with torch.no_grad():
            module(lr[..., :32, :32])  # warm-up
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                module(lr)
                times.append(time.perf_counter() - start)
        return min(times)

    return seconds(ours, repeats), seconds(reference.module, 1), (lr.shape[-1], lr.shape[-2])


def load_reference(config: TrainConfig, run_dir: Path) -> Reference | None:
    if not config.export.reference:
        return None
    path = expand_path(config.export.reference)
    if not path.is_file():
        raise ValueError(f"export.reference {path} does not exist")
    return Reference(path, run_dir / "reference-outputs")


def scores_table(rows: list[Row]) -> str:
    """A Markdown table of scores, with a BRISQUE column when the rows have one."""
    with_brisque = rows[0].brisque is not None
    head = "| | PSNR-Y (dB) | SSIM-Y | sharpness |" + (" BRISQUE ↓ |" if with_brisque else "")
    lines = [head, "|---|---|---|---|" + ("---|" if with_brisque else "")]
    for r in rows:
        s = r.scores
        cells = f"| {r.label} | {s.psnr:.2f} | {s.ssim:.4f} | {s.sharpness:.2f} |"
        lines.append(cells + (f" {r.brisque:.1f} |" if with_brisque else ""))
    return "\n".join(lines)


def below_line(point: Row, a: Row, b: Row) -> bool:
    """Whether `point` has a lower BRISQUE than the line through a and b at its PSNR (the good side)."""
    assert point.brisque is not None and a.brisque is not None and b.brisque is not None
    if a.scores.psnr == b.scores.psnr:
        return point.brisque < min(a.brisque, b.brisque)
    slope = (b.brisque - a.brisque) / (b.scores.psnr - a.scores.psnr)
    return point.brisque < a.brisque + slope * (point.scores.psnr - a.scores.psnr)


def held_out_sections(
    config: TrainConfig, results: list[HeldOutResult], labels: dict[str, str], reference: Reference | None
) -> list[str]:
    ex = config.export
    where = ", ".join(dict.fromkeys(f"`{s.path}`" for s in ex.evaluation))
    size = f"crops of {ex.evaluation_crop_size}²" if ex.evaluation_crop_size else "whole photos"
    sections = []
    for result in results:
        title = DEGRADATION_TITLES[result.degradation].format(scale=config.model.scale)
        bicubic, psnr = result.rows[0], result.rows[1]
        ref = result.row(reference.name) if reference is not None else None
        gan = result.row(labels["gan"]) if "gan" in labels else None
        notes = [f"PSNR model vs bicubic: **{psnr.scores.psnr - bicubic.scores.psnr:+.2f} dB**."]
        if reference is not None and ref is not None and gan is not None and ref.brisque and gan.brisque:
            notes.append(
                f"GAN model vs {reference.name}: BRISQUE {gan.brisque / ref.brisque - 1:+.0%}, "
                f"PSNR-Y {gan.scores.psnr - ref.scores.psnr:+.2f} dB."
            )
        sections.append(
            f"## Held-out photos, {title}\n\n{result.images} {size} from {where}; never used in "
            "training.\n\n" + scores_table(result.rows) + "\n\n" + " ".join(notes)
        )
        if result.degradation == "damaged":
            sections.append("### Artefacts on these photos\n\n" + artefact_table(result, labels, reference))
        if result.sweep and ref is not None and bicubic.brisque is not None:
            lines = ["| strength | PSNR-Y (dB) | BRISQUE ↓ | below the bicubic–reference line |"]
            lines.append("|---|---|---|---|")
            for strength, row in result.sweep:
                side = "yes" if below_line(row, bicubic, ref) else "no"
                lines.append(f"| {strength:.2f} | {row.scores.psnr:.2f} | {row.brisque:.1f} | {side} |")
            heading = f"### Strength sweep on these photos ({result.degradation} inputs)"
            sections.append(heading + "\n\n" + "\n".join(lines))
    return sections


#: What the sharp end must reach on damaged inputs: blockiness within this much of the reference's
#: and at most BLOCKINESS_TARGET, and a PSNR-Y against the reference's output of at least this.
BLOCKINESS_MARGIN = 0.05
BLOCKINESS_TARGET = 1.10
AGREEMENT_TARGET_DB = 33.0


def artefact_rows(result: HeldOutResult, labels: dict[str, str]) -> list[tuple[str, Row]]:
    """bicubic, ours along the strength sweep (or both ends), then the reference."""
    ours = {labels[k] for k in ("psnr", "gan") if k in labels}
    named = {labels.get("psnr"): "0", labels.get("gan"): "1"}
    rows: list[tuple[str, Row]] = [("bicubic", result.rows[0])]
    if result.sweep:
        for strength, row in result.sweep:
            end = f" (`{row.label}`)" if row.label in ours else ""
            rows.append((f"ours, strength {strength:g}{end}", row))
    else:
        ends = [r for r in result.rows if r.label in ours]
        rows += [(f"ours, strength {named[r.label]} (`{r.label}`)", r) for r in ends]
    rows += [(r.label, r) for r in result.rows[1:] if r.label not in ours]
    return rows


def artefact_table(result: HeldOutResult, labels: dict[str, str], reference: Reference | None) -> str:
    """PSNR-Y against the ground truth, blockiness on the input's JPEG grid and, with a reference,
    PSNR-Y against its output; then whether the sharp end meets its targets."""
    ref_name = reference.name if reference is not None else None
    lines = [
        "| | PSNR-Y vs ground truth (dB) | blockiness ↓ (1.00: no JPEG grid) | "
        f"mesh ↓ (1.00: no pixel grid) | PSNR-Y vs {ref_name or '—'} (dB) |",
        "|---|---|---|---|---|",
    ]

    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    for label, row in artefact_rows(result, labels):
        against = None if row.label == ref_name else row.vs_reference
        cells = [f"{row.scores.psnr:.2f}", cell(row.blockiness), cell(row.mesh), cell(against)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if result.originals is not None:
        grid, pixels = result.originals
        lines.append(f"| the ground truths themselves | — | {grid:.2f} | {cell(pixels)} | — |")
    sharp = result.row(labels["gan"]) if "gan" in labels else None
    ref = result.row(ref_name) if ref_name else None
    notes = []
    if sharp is not None and ref is not None and sharp.blockiness and ref.blockiness and sharp.vs_reference:
        limit = min(ref.blockiness + BLOCKINESS_MARGIN, BLOCKINESS_TARGET)
        notes.append(
            f"Sharp end: blockiness {sharp.blockiness:.2f} against at most {limit:.2f} "
            f"({ref_name}'s + {BLOCKINESS_MARGIN:g}, and ≤ {BLOCKINESS_TARGET:.2f}): "
            + ("**met**" if sharp.blockiness <= limit else "**not met**")
            + f"; PSNR-Y against {ref_name}'s output {sharp.vs_reference:.2f} dB against at least "
            f"{AGREEMENT_TARGET_DB:g} dB: "
            + ("**met**" if sharp.vs_reference >= AGREEMENT_TARGET_DB else "**not met**")
            + "."
        )
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "")


def sweep_figure(path: Path, results: list[HeldOutResult], reference: Reference) -> Path:
    """(PSNR-Y, BRISQUE) of the strength sweep, bicubic and the reference, one panel per degradation."""
    panels = []
    for result in results:
        bicubic, ref = result.rows[0], result.row(reference.name)
        if not result.sweep or ref is None or bicubic.brisque is None:
            continue
        xs = [row.scores.psnr for _, row in result.sweep]
        ys = [float(row.brisque or 0.0) for _, row in result.sweep]
        line_x = [bicubic.scores.psnr, ref.scores.psnr]
        line_y = [float(bicubic.brisque or 0.0), float(ref.brisque or 0.0)]
        panels.append((
            f"held-out photos, {result.degradation} inputs: BRISQUE (lower is more natural) against PSNR-Y",
            [
                ("ours, strength 0 to 1", xs, ys),
                ("line from bicubic to the reference", line_x, line_y),
                ("bicubic", line_x[:1], line_y[:1]),
                (reference.name, line_x[1:], line_y[1:]),
            ],
        ))
    return save_chart(path, panels, "PSNR-Y (dB)", width=760)
