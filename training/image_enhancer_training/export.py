"""Export a trained PSNR/GAN pair: fp16 safetensors, a model card, and weights-manifest entries.

The GAN entry carries `pair = {psnr, gan}` so the engine's strength control blends the two. The card
records data, steps, losses, validation and held-out scores, and a strength sweep (PSNR falls, sharpness
rises) plotted as a PNG next to it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from image_enhancer.models.registry import load_model
from image_enhancer.paths import repo_weights_dir
from image_enhancer.weights.integrity import sha256_file
from image_enhancer.weights.interpolation import interpolate
from image_enhancer.weights.manifest import (
    MANIFEST_NAME,
    ModelEntry,
    Source,
    WeightsFile,
    load_manifest,
    model_path,
    packaged_manifest_path,
    write_entries,
)

from .config import TrainConfig, expand_path
from .curves import save_chart
from .degradations import DegradationConfig, jpeg, quantize, to_uint8
from .evaluation import (
    Row,
    evaluate_held_out,
    held_out_sections,
    load_reference,
    measure_speed,
    scores_table,
    served_module,
    sweep_figure,
)
from .networks import stored_names
from .validation import Scores, ValidationSet, bicubic_upscale

_ARCH_KEYS = {
    "SRVGGNetCompact": ("num_feat", "num_conv"),
    "RRDBNet": ("num_feat", "num_block", "num_grow_ch"),
    "SPAN": ("num_feat",),
    "RealPLKSR": ("num_feat", "num_block"),
}
# The fixed damage used for the card's restoration example and scores.
DAMAGE_NOISE_SIGMA = 10.0
DAMAGE_JPEG_QUALITY = 40


def _folders(config: TrainConfig) -> tuple[Path, Path, Path]:
    out = expand_path(config.export.dir) if config.export.dir else repo_weights_dir()
    if config.export.manifest:
        manifest = expand_path(config.export.manifest)
    else:  # the repository's models are listed in the manifest that ships with the package
        manifest = packaged_manifest_path() if out == repo_weights_dir() else out / MANIFEST_NAME
    cards = expand_path(config.export.cards) if config.export.cards else out / "cards"
    return out, manifest, cards


def _half(path: Path) -> dict[str, Tensor]:
    return {k: v.half().contiguous() for k, v in load_file(str(path)).items()}


def _evaluate(state: dict[str, Tensor], data: ValidationSet) -> Scores:
    return data.evaluate(served_module(state), torch.device("cpu"))


def damaged_inputs(data: ValidationSet, seed: int = 0) -> list[Tensor]:
    """The set's LR inputs with fixed Gaussian noise and JPEG, for the restoration scores."""
    gen = torch.Generator().manual_seed(seed)
    damaged = []
    for lr in data.lr:
        noisy = lr + torch.randn(lr.shape, generator=gen) * DAMAGE_NOISE_SIGMA / 255.0
        damaged.append(jpeg(quantize(noisy[None]), [DAMAGE_JPEG_QUALITY])[0])
    return damaged


def _restoration_figure(path: Path, data: ValidationSet, states: dict[str, dict[str, Tensor]]) -> None:
    """One damaged crop: bicubic of the damaged input | each model's output | ground truth."""
    lr = damaged_inputs(data)[:1]
    tiles = [bicubic_upscale(lr[0][None], data.scale)[0]]
    tiles += [data.run(served_module(state), torch.device("cpu"), lr)[0] for state in states.values()]
    tiles.append(data.hr[0])
    row = torch.cat(tiles, dim=2)
    Image.fromarray(to_uint8(row).permute(1, 2, 0).numpy()).save(path)


def _damaged_scores(state: dict[str, Tensor] | None, data: ValidationSet) -> Scores:
    lr = damaged_inputs(data)
    if state is None:
        return data.score_outputs([bicubic_upscale(x[None], data.scale)[0] for x in lr])
    return data.score_outputs(data.run(served_module(state), torch.device("cpu"), lr))


def _entry(
    config: TrainConfig,
    name: str,
    filename: str,
    sha: str,
    arch: str,
    pair: dict[str, str] | None,
    sources: tuple[Source, ...],
) -> ModelEntry:
    kind, role = ("gan", "GAN fine-tune") if name.endswith("-gan") else ("psnr", "PSNR-oriented")
    description = config.export.model_descriptions.get(kind) or f"{config.export.description} ({role})."
    return ModelEntry(
        name=name,
        architecture=arch,
        scale=config.model.scale,
        description=description.strip(),
        license=config.export.licence,
        source="ours",
        card=f"cards/{config.export.name}.md",
        files=(WeightsFile("weights", filename, sha, sources),),
        pair=pair,
    )


def _existing_model(manifest_path: Path, name: str) -> tuple[ModelEntry, Path]:
    """A GAN model already in the manifest (e.g. Real-ESRGAN x4plus) and its installed file."""
    entry = load_manifest(manifest_path).get(name)
    if entry is None:
        raise ValueError(f"export.pair_gan names {name!r}, which is not in {manifest_path}")
    path = model_path(entry)
    if not path.is_file():
        raise ValueError(f"export.pair_gan: {name} is not installed ({path}); install it first")
    return entry, path


def _pair_entry(config: TrainConfig, name: str, arch: str, gan: ModelEntry) -> ModelEntry:
    """A model named `name` that runs the GAN model's own file, with our PSNR model as its pair."""
    return dataclasses.replace(
        gan,
        name=name,
        default=False,
        architecture=arch,
        scale=config.model.scale,
        description=f"{gan.description} Strength blends it with our PSNR-oriented {name}-psnr.",
        card=f"cards/{name}.md",
        pair={"psnr": f"{name}-psnr", "gan": gan.name},
    )


def export_models(config: TrainConfig, result: Any, validation: ValidationSet | None) -> list[Path]:
    """Write the pair, the card and manifest entries; returns the files written."""
    out_dir, manifest_path, cards_dir = _folders(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    cards_dir.mkdir(parents=True, exist_ok=True)
    name = config.export.name
    arch_key = config.model.arch
    states = {"psnr": stored_names(_half(result.psnr_weights), arch_key)}
    if result.gan_weights is not None:
        states["gan"] = stored_names(_half(result.gan_weights), arch_key)
    # Loading through the engine's registry checks that the exported files are usable as they are.
    arch = load_model({k: v.float() for k, v in states["psnr"].items()}).descriptor.architecture

    written: list[Path] = []
    files: dict[str, tuple[str, str]] = {}
    for kind, state in states.items():
        filename = f"{name}-{kind}.safetensors"
        path = out_dir / filename
        # One metadata entry: safetensors writes several in no fixed order, and the file's sha256
        # would then change from one export of the same weights to the next.
        save_file(state, str(path), metadata={"model": f"{name}-{kind}"})
        files[kind] = (filename, sha256_file(path))
        written.append(path)

    # Files in the repository's weights/ are committed; anywhere else they are local, installed files.
    sources = (Source("repo"),) if out_dir.resolve() == repo_weights_dir().resolve() else ()
    entries = [_entry(config, f"{name}-psnr", *files["psnr"], arch, None, sources)]
    if "gan" in states:
        pair = {"psnr": f"{name}-psnr", "gan": f"{name}-gan"}
        entries.append(_entry(config, f"{name}-gan", *files["gan"], arch, pair, sources))
    elif config.export.pair_gan:
        gan_entry, gan_path = _existing_model(manifest_path, config.export.pair_gan)
        states["gan"] = _half(gan_path)
        entries.append(_pair_entry(config, name, arch, gan_entry))
    write_entries(manifest_path, entries)
    written.append(manifest_path)

    labels = {"psnr": f"{name}-psnr", "gan": config.export.pair_gan or f"{name}-gan"}
    report = Report(config, arch, labels, getattr(result, "config_file", None))
    if validation is not None:
        report.validation(validation, states)
        if "gan" in states:
            report.sweep(validation, states, cards_dir / f"{name}-strength.png")
        figure = cards_dir / f"{name}-restoration.png"
        _restoration_figure(figure, validation, states)
        report.figures.append(
            (
                figure.name,
                "Damaged input (noise σ 10, JPEG q 40): bicubic | "
                + " | ".join(labels[k] for k in states)
                + " | ground truth",
            )
        )
        written += [figure] + ([cards_dir / f"{name}-strength.png"] if "gan" in states else [])
    if config.export.evaluation:
        reference = load_reference(config, result.run_dir)
        results = evaluate_held_out(config, states, labels, reference)
        report.sections += held_out_sections(config, results, labels, reference)
        if reference is not None and config.export.brisque and any(
            r.sweep and r.row(reference.name) for r in results
        ):
            figure = sweep_figure(cards_dir / f"{name}-sweep.png", results, reference)
            caption = f"Strength sweep on held-out photos: (PSNR-Y, BRISQUE), bicubic and {reference.name}"
            report.figures.insert(0, (figure.name, caption))
            written.append(figure)
        if reference is not None:
            speed = measure_speed(states["psnr"], reference, results[0].first_input)
            report.speed(speed, labels["psnr"], reference.name)
    curves = result.run_dir / "curves.png"
    if curves.is_file():
        shutil.copyfile(curves, cards_dir / f"{name}-curves.png")
        report.figures.append((f"{name}-curves.png", "Training losses and validation scores"))
        written.append(cards_dir / f"{name}-curves.png")
    card = cards_dir / f"{name}.md"
    card.write_text(report.markdown(name, files), encoding="utf-8")
    written.append(card)
    return written


def _damage_text(deg: DegradationConfig) -> str:
    if deg.pipeline == "camera":
        cam = deg.camera
        return (
            f"the damage of real photos (mild Gaussian blur σ {cam.blur_sigma[0]:g}–{cam.blur_sigma[1]:g}, "
            f"a chain of {cam.resize_steps[0]}–{cam.resize_steps[1]} resizes, signal-dependent camera noise "
            f"in luma and chroma, JPEG q {cam.jpeg_quality[0]}–{cam.jpeg_quality[1]} with chroma "
            f"subsampling, compressed twice with probability {cam.double_jpeg_prob:g})."
        )
    return (
        "Real-ESRGAN-style second order (blur kernels incl. anisotropic / generalized / plateau and "
        "sinc, random resize, Gaussian and Poisson noise, JPEG; second order with probability "
        f"{deg.second_order_prob:g})."
    )


class Report:
    """Collects the figures for a model card and renders it as Markdown."""

    def __init__(
        self, config: TrainConfig, arch: str, labels: dict[str, str], config_file: Path | None = None
    ) -> None:
        self.config = config
        self.config_file = config_file
        self.arch = arch
        self.labels = labels
        self.sections: list[str] = []
        self.figures: list[tuple[str, str]] = []

    def _table(self, rows: list[tuple[str, Scores]]) -> str:
        return scores_table([Row(label, scores) for label, scores in rows])

    def validation(self, data: ValidationSet, states: dict[str, dict[str, Tensor]]) -> None:
        rows = [("bicubic", data.bicubic)] + [(self.labels[k], _evaluate(s, data)) for k, s in states.items()]
        damaged = [("bicubic", _damaged_scores(None, data))] + [
            (self.labels[k], _damaged_scores(s, data)) for k, s in states.items()
        ]
        self.sections.append(
            f"## Validation ({len(data.hr)} held-out crops, bicubic ×{data.scale} degradation)\n\n"
            + self._table(rows)
            + f"\n\nSame crops with Gaussian noise (σ {DAMAGE_NOISE_SIGMA:g}) and JPEG (quality "
            f"{DAMAGE_JPEG_QUALITY}) added to the input:\n\n" + self._table(damaged)
        )

    def sweep(self, data: ValidationSet, states: dict[str, dict[str, Tensor]], figure: Path) -> None:
        strengths = self.config.export.strengths
        scores = [_evaluate(interpolate(states["psnr"], states["gan"], s), data) for s in strengths]
        psnr, sharpness = [s.psnr for s in scores], [s.sharpness for s in scores]
        save_chart(
            figure,
            [
                ("PSNR-Y on validation crops (dB)", [("PSNR", strengths, psnr)]),
                ("sharpness (mean |Laplacian| of Y)", [("sharpness", strengths, sharpness)]),
            ],
            "strength (0 = faithful PSNR model, 1 = sharp GAN model)",
            width=700,
        )
        lines = ["| strength | PSNR-Y (dB) | SSIM-Y | sharpness |", "|---|---|---|---|"]
        lines += [
            f"| {strength:.2f} | {s.psnr:.2f} | {s.ssim:.4f} | {s.sharpness:.2f} |"
            for strength, s in zip(strengths, scores, strict=True)
        ]
        self.sections.append("## Strength sweep (network interpolation)\n\n" + "\n".join(lines))
        caption = "Strength sweep: PSNR falls and sharpness rises towards the GAN model"
        self.figures.insert(0, (figure.name, caption))

    def speed(self, measured: tuple[float, float, tuple[int, int]], ours: str, reference: str) -> None:
        mine, theirs, (w, h) = measured
        threads = torch.get_num_threads()
        self.sections.append(
            f"## Speed\n\nOne {w}×{h} held-out photo upscaled ×{self.config.model.scale} with PyTorch on the "
            f"CPU ({threads} thread{'s' if threads > 1 else ''}), both measured in the same run: "
            f"{ours} {mine:.2f} s, {reference} {theirs:.1f} s — **{theirs / mine:.0f}× faster**."
        )

    def _config_name(self, name: str) -> str:
        """The config file as a user would type it: relative to the folder trained from."""
        if self.config_file is None:
            return f"training/configs/{name}.toml"
        path = self.config_file
        if path.is_absolute() and path.is_relative_to(Path.cwd()):
            path = path.relative_to(Path.cwd())
        return path.as_posix()

    def _psnr_steps(self) -> str:
        c = self.config
        if c.psnr.iterations == 0 and c.model.init_blend:
            w = c.model.init_blend_weight
            return (
                f"PSNR stage: the weight average {1 - w:g}·`{c.model.init}` + {w:g}·`{c.model.init_blend}`, "
                "not trained further"
            )
        return (
            f"PSNR stage {c.psnr.iterations} iterations (Adam, lr {c.psnr.lr:g}, {c.psnr.schedule} schedule, "
            f"EMA {c.psnr.ema_decay})"
        )

    def markdown(self, name: str, files: dict[str, tuple[str, str]]) -> str:
        c = self.config
        sources = "\n".join(
            f"- {s.kind}"
            + (f": `{s.path}`" if s.path else "")
            + (f", include {s.include}" if s.include else "")
            + (f", exclude {s.exclude}" if s.exclude else "")
            + (f", downscaled ×{s.downscale}" if s.downscale > 1 else "")
            + f" (weight {s.weight:g})"
            for s in c.data.sources
        )
        deg = c.degradation
        teacher = Path(c.data.teacher).stem if c.data.teacher else ""

        def target(loss: str, distill: float) -> str:
            """The pixel loss's target: ground truth, the teacher's output, or their mix."""
            if not teacher or distill == 0.0:
                return loss
            if distill == 1.0:
                return f"{loss} to {teacher}'s output"
            return f"({1 - distill:g}·{loss} to the ground truth + {distill:g}·{loss} to {teacher}'s output)"

        losses = [f"PSNR stage: {target(c.psnr.loss, c.psnr.distill)}"]
        if c.gan.iterations:
            perceptual = f" + {c.gan.perceptual_weight:g}·VGG19 perceptual" if c.gan.vgg_weights else ""
            real = f"; its real images are {teacher}'s outputs" if teacher and c.gan.distill else ""
            losses.append(
                f"GAN stage: {c.gan.pixel_weight:g}·{target(c.gan.pixel_loss, c.gan.distill)} + "
                f"{c.gan.gan_weight:g}·adversarial (U-Net discriminator with spectral norm, "
                f"{c.gan.disc_feat} features{real}){perceptual}"
            )
        if c.data.teacher_cache:
            losses.append(
                f"batches drawn from {c.data.teacher_cache_size} degraded crops with {teacher}'s outputs "
                "computed once (the teacher cache), flipped and rotated"
            )
        hp = dataclasses.asdict(c.model)
        parts = [
            f"# {name}\n",
            f"{c.export.description}\n",
            "| file | sha256 |\n|---|---|\n"
            + "\n".join(f"| `{f}` | `{h}` |" for f, h in files.values())
            + "\n",
            f"Architecture: {self.arch} ×{c.model.scale}, "
            + ", ".join(f"{k} {v}" for k, v in hp.items() if k in _ARCH_KEYS[c.model.arch])
            + f". Licence: {c.export.licence}. Source: ours (trained with `training/`).\n",
            "## Training\n",
            f"Data:\n{sources}\n",
            f"Crops of {c.data.patch_size}² (HR), batch {c.data.batch_size}, random flips and 90° rotations. "
            f"Degradations generated on the fly: {deg.clean_prob:.0%} plain bicubic, the rest "
            + _damage_text(deg) + "\n",
            f"Steps: {self._psnr_steps()}; GAN stage {c.gan.iterations} iterations "
            f"(lr {c.gan.lr_g:g} / {c.gan.lr_d:g}), started from the PSNR stage's weights. "
            "Exported weights are the EMA, in fp16.\n",
            "Losses: " + "; ".join(losses) + ".\n",
            f"Reproduce: `image-enhancer train {self._config_name(name)}` (seed {c.seed})"
            + (", after the runs that made `model.init` and `model.init_blend`" if c.model.init_blend else "")
            + ".\n",
        ]
        if c.export.notes:
            parts.append(f"Notes: {c.export.notes}\n")
        parts += [s + "\n" for s in self.sections]
        parts += [f"![{caption}]({fname})\n\n*{caption}.*\n" for fname, caption in self.figures]
        if c.export.limitations:
            parts.append(f"## Limitations\n\n{c.export.limitations.strip()}\n")
        return "\n".join(parts)
