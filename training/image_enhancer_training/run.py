"""`run_training(config)`: PSNR stage → GAN stage → export, resumable; `train_main(argv)` is the CLI.

Run folder layout (`output_dir`): `config.json` (the parsed config), `log.jsonl` (losses and
validation scores), `curves.png`, `checkpoints/` (resume points), `psnr_generator.safetensors` and
`gan_generator.safetensors` (each stage's EMA weights once the stage is complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .checkpoint import Checkpoint, CheckpointError, load_latest
from .config import ConfigError, TrainConfig, config_to_dict, load_config
from .curves import plot_training_log
from .data import DataError, PatchDataset
from .degradations import Degrader
from .distributed import Placement, barrier, choose_device, setup, teardown
from .export import export_models
from .networks import build_generator
from .stages import GANStage, PSNRStage, RunContext, Stage, restore_stage, run_stage
from .teacher_cache import CachedSamples, TeacherCacheError, build_teacher_cache, load_teacher
from .validation import ValidationSet

PSNR_WEIGHTS = "psnr_generator.safetensors"
GAN_WEIGHTS = "gan_generator.safetensors"


@dataclass
class TrainingResult:
    run_dir: Path
    psnr_weights: Path
    gan_weights: Path | None
    # Weights of the generator as trained by the last stage that ran (identical on every DDP rank).
    generator_state: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    exported: list[Path] = field(default_factory=list)
    config_file: Path | None = None  # the config this run was started with, named in the model card


def _fresh_run(run_dir: Path) -> None:
    """Forget a previous run's progress in `run_dir` (only files this module writes)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for name in ("log.jsonl", "curves.png", PSNR_WEIGHTS, GAN_WEIGHTS):
        (run_dir / name).unlink(missing_ok=True)


def _resume_and_run(
    ctx: RunContext, stage: Stage, name: str, ckpt: Checkpoint | None, redraw: Callable[[], None]
) -> dict[str, float]:
    """Run `stage` to its end, from the checkpoint's iteration when the checkpoint is of this stage."""
    start = 0
    if ckpt is not None and ckpt.stage == name:
        restore_stage(stage, ckpt)
        start = ckpt.iteration
    return run_stage(ctx, stage, start, redraw)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _save_weights(module: nn.Module, path: Path, placement: Placement) -> None:
    if placement.is_main:
        state = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path))
    barrier(placement)


def _context(config: TrainConfig, run_dir: Path, placement: Placement) -> RunContext:
    dataset: PatchDataset | CachedSamples
    if config.data.teacher_cache:
        dataset = CachedSamples(config)
    else:
        dataset = PatchDataset(config.data.sources, config.data.patch_size, config.seed)
    degrader = Degrader(config.degradation, config.model.scale, seed=config.seed)
    validation = None
    if placement.is_main and config.validation.sources:
        validation = ValidationSet(config.validation, config.model.scale, config.seed, config.degradation)
    teacher = None
    if config.data.teacher and not config.data.teacher_cache:
        teacher = load_teacher(
            config.data.teacher, config.model.scale, placement.device, config.data.teacher_resize
        )
    return RunContext(config, run_dir, placement, dataset, degrader, validation, teacher)


def _stage_done(weights: Path, ckpt: Checkpoint | None, stage: str, iterations: int) -> bool:
    """A stage is done once its weights exist, unless the config now asks for more iterations."""
    unfinished = ckpt is not None and ckpt.stage == stage and ckpt.iteration < iterations
    return weights.is_file() and not unfinished


def run_training(config_path: Path, resume: bool = True) -> TrainingResult:
    """Train as `config_path` says, resuming from the run folder's latest checkpoint when `resume`;
    a configured teacher cache is completed first."""
    config = load_config(Path(config_path))
    if config.data.teacher_cache:
        build_cache(config)
    placement = setup(config.device)
    try:
        return _run(config, placement, resume, Path(config_path))
    finally:
        teardown(placement)


def build_cache(config: TrainConfig) -> Path:
    """Complete the config's teacher cache (one process; the teacher runs on the config's device)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    return build_teacher_cache(config, choose_device(config.device))


def _run(config: TrainConfig, placement: Placement, resume: bool, config_file: Path) -> TrainingResult:
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.output_dir).expanduser()
    if placement.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _fresh_run(run_dir)
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=1), encoding="utf-8")
    barrier(placement)
    ctx = _context(config, run_dir, placement)
    ckpt = load_latest(ctx.checkpoint_dir)
    result = TrainingResult(run_dir, run_dir / PSNR_WEIGHTS, None, config_file=config_file)

    def redraw() -> None:
        if (run_dir / "log.jsonl").is_file():
            plot_training_log(run_dir / "log.jsonl", run_dir / "curves.png")

    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    generator = build_generator(config.model).to(placement.device)
    if not _stage_done(result.psnr_weights, ckpt, "psnr", config.psnr.iterations):
        stage = PSNRStage(generator, config.psnr, placement)
        result.scores["psnr"] = _resume_and_run(ctx, stage, "psnr", ckpt, redraw)
        _save_weights(stage.ema.shadow, result.psnr_weights, placement)
        result.generator_state = _cpu_state(generator)

    if config.gan.iterations > 0:
        result.gan_weights = run_dir / GAN_WEIGHTS
        if not _stage_done(result.gan_weights, ckpt, "gan", config.gan.iterations):
            # Built without `model.init`: the GAN stage starts from the PSNR stage's result.
            generator = build_generator(dataclasses.replace(config.model, init="")).to(placement.device)
            generator.load_state_dict(load_file(str(result.psnr_weights), device=str(placement.device)))
            stage = GANStage(generator, config.gan, placement)
            result.scores["gan"] = _resume_and_run(ctx, stage, "gan", ckpt, redraw)
            _save_weights(stage.ema.shadow, result.gan_weights, placement)
            result.generator_state = _cpu_state(generator)

    if placement.is_main:
        redraw()
        if config.export.name:
            result.exported = export_models(config, result, ctx.validation)
    barrier(placement)
    return result


def train_main(argv: Sequence[str] | None = None) -> int:
    """`image-enhancer train CONFIG [--no-resume]`; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="image-enhancer train", description="train a model from a config")
    parser.add_argument("config", type=Path, help="training config (.toml or .json), see training/configs/")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    parser.add_argument("--teacher-cache-only", action="store_true",
                        help="only compute the missing samples of data.teacher_cache, then stop")
    args = parser.parse_args(argv)
    try:
        if args.teacher_cache_only:
            print(f"teacher cache: {build_cache(load_config(args.config))}")
            return 0
        result = run_training(args.config, resume=not args.no_resume)
    except (ConfigError, DataError, CheckpointError, TeacherCacheError, ValueError) as exc:
        print(f"image-enhancer train: error: {exc}", file=sys.stderr)
        return 2
    print(f"run folder: {result.run_dir}")
    for path in result.exported:
        print(f"exported: {path}")
    return 0
