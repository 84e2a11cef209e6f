"""The two training stages and the loop that drives them.

PSNR stage: pixel loss (L1 / Charbonnier), Adam, EMA of the weights, warm-up + cosine or multistep LR.
GAN stage: starts from the PSNR stage's EMA weights; pixel + adversarial loss against a U-Net
discriminator with spectral norm, plus a VGG perceptual loss when the user supplies VGG weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import Checkpoint, save_checkpoint
from .config import GANStageConfig, PSNRStageConfig, TrainConfig, expand_path
from .data import IterationSampler, PatchDataset
from .degradations import Degrader
from .discriminator import UNetDiscriminatorSN
from .distributed import Placement, barrier
from .ema import EMA
from .losses import PerceptualLoss, PixelLoss, discriminator_loss, generator_adversarial_loss, pixel_loss
from .teacher_cache import CachedSamples
from .validation import ValidationSet

LOG_EVERY = 10


@dataclass
class Batch:
    lq: Tensor  # the degraded input
    hr: Tensor  # the ground truth
    teacher: Tensor | None = None  # the teacher's output for `lq`, when distilling


def target_loss(loss: PixelLoss, output: Tensor, batch: Batch, distill: float) -> Tensor:
    """Pixel loss against the ground truth, the teacher's output, or a mix (`distill` = its share)."""
    if batch.teacher is None or distill == 0.0:
        return loss(output, batch.hr)
    if distill == 1.0:
        return loss(output, batch.teacher)
    return (1.0 - distill) * loss(output, batch.hr) + distill * loss(output, batch.teacher)


def lr_at(config: PSNRStageConfig, iteration: int) -> float:
    """Learning rate for the PSNR stage at `iteration` (a pure function, so resumes need no state)."""
    if config.warmup and iteration < config.warmup:
        return config.lr * (iteration + 1) / config.warmup
    if config.schedule == "cosine":
        span = max(1, config.iterations - config.warmup)
        progress = min(1.0, (iteration - config.warmup) / span)
        return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    if config.schedule == "multistep":
        return config.lr * 0.5 ** sum(iteration >= m for m in config.milestones)
    return config.lr


def _wrap(module: nn.Module, placement: Placement) -> nn.Module:
    if placement.world_size == 1:
        return module
    device_ids = [placement.device.index] if placement.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


class PSNRStage:
    name = "psnr"

    def __init__(self, generator: nn.Module, config: PSNRStageConfig, placement: Placement) -> None:
        self.config = config
        self.generator = generator
        self.trained = _wrap(generator, placement)
        self.ema = EMA(generator, config.ema_decay)
        self.loss = pixel_loss(config.loss)
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)

    @property
    def iterations(self) -> int:
        return self.config.iterations

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "ema": self.ema.shadow}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer}

    def set_lr(self, iteration: int) -> float:
        lr = lr_at(self.config, iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, batch: Batch) -> dict[str, float]:
        loss = target_loss(self.loss, self.trained(batch.lq), batch, self.config.distill)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.generator)
        return {"loss_pixel": loss.item()}


class GANStage:
    name = "gan"

    def __init__(self, generator: nn.Module, config: GANStageConfig, placement: Placement) -> None:
        self.config = config
        self.generator = generator
        self.trained = _wrap(generator, placement)
        self.ema = EMA(generator, config.ema_decay)
        self.discriminator = UNetDiscriminatorSN(num_feat=config.disc_feat).to(placement.device)
        self.disc_trained = _wrap(self.discriminator, placement)
        self.pixel = pixel_loss(config.pixel_loss)
        self.perceptual = None
        if config.vgg_weights:
            self.perceptual = PerceptualLoss(expand_path(config.vgg_weights)).to(placement.device)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=config.betas)

    @property
    def iterations(self) -> int:
        return self.config.iterations

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "ema": self.ema.shadow, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def set_lr(self, iteration: int) -> float:
        return self.config.lr_g

    def step(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        # With a teacher, its outputs are what the discriminator learns to call real.
        real = batch.teacher if batch.teacher is not None else batch.hr
        # Generator step. The discriminator runs unwrapped here: its weights are frozen for this
        # step, and DDP must only see it in the discriminator step where all its weights get grads.
        self.discriminator.requires_grad_(False)
        output = self.trained(batch.lq)
        l_pix = cfg.pixel_weight * target_loss(self.pixel, output, batch, cfg.distill)
        l_gan = cfg.gan_weight * generator_adversarial_loss(self.discriminator(output))
        loss = l_pix + l_gan
        logs = {"loss_pixel": l_pix.item(), "loss_gan": l_gan.item()}
        if self.perceptual is not None:
            l_per = cfg.perceptual_weight * self.perceptual(output, real)
            loss = loss + l_per
            logs["loss_perceptual"] = l_per.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.ema.update(self.generator)

        # Discriminator step on the real images and the detached output (fake).
        self.discriminator.requires_grad_(True)
        l_d = discriminator_loss(self.disc_trained(real), self.disc_trained(output.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_d.step()
        logs["loss_d"] = l_d.item()
        return logs


Stage = PSNRStage | GANStage


@dataclass
class RunContext:
    config: TrainConfig
    run_dir: Path
    placement: Placement
    dataset: PatchDataset | CachedSamples
    degrader: Degrader
    validation: ValidationSet | None
    teacher: nn.Module | None

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def log(self, record: dict[str, Any]) -> None:
        if self.placement.is_main:
            with (self.run_dir / "log.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def stage_offset(config: TrainConfig, stage: str) -> int:
    """Global step of a stage's first iteration, so both stages share one x axis in the curves."""
    return config.psnr.iterations if stage == "gan" else 0


def save_stage_checkpoint(ctx: RunContext, stage: Stage, iteration: int, extra: dict[str, Any]) -> None:
    if ctx.placement.is_main:
        ckpt = Checkpoint(
            stage=stage.name,
            iteration=iteration,
            modules={k: m.state_dict() for k, m in stage.modules().items()},
            optimizers={k: o.state_dict() for k, o in stage.optimizers().items()},
            extra=extra,
        )
        save_checkpoint(ctx.checkpoint_dir, ckpt)
    barrier(ctx.placement)


def restore_stage(stage: Stage, ckpt: Checkpoint) -> None:
    for name, module in stage.modules().items():
        module.load_state_dict(ckpt.modules[name])
    for name, optimizer in stage.optimizers().items():
        optimizer.load_state_dict(ckpt.optimizers[name])
    stage.ema.updates = int(ckpt.extra.get("ema_updates", ckpt.iteration))


def validate(ctx: RunContext, stage: Stage, iteration: int) -> dict[str, float]:
    """Score the EMA generator on the held-out crops (main process) and log it."""
    if ctx.validation is None or not ctx.placement.is_main:
        return {}
    scores = ctx.validation.evaluate(stage.ema.shadow, ctx.placement.device)
    record = {
        "kind": "validation",
        "stage": stage.name,
        "iteration": iteration,
        "step": stage_offset(ctx.config, stage.name) + iteration,
        "val_psnr": scores.psnr,
        "val_ssim": scores.ssim,
        "bicubic_psnr": ctx.validation.bicubic.psnr,
        "bicubic_ssim": ctx.validation.bicubic.ssim,
    }
    ctx.log(record)
    return scores.as_dict("val_")


def make_batch(ctx: RunContext, stage: str, iteration: int, item: Tensor | list[Tensor]) -> Batch:
    """A training batch from what the loader gave: HR crops to degrade (and run the teacher on), or
    cached (lq, hr, teacher) triples."""
    device = ctx.placement.device
    if isinstance(item, list | tuple):
        lq, hr, teacher = (t.to(device, non_blocking=True) for t in item)
        return Batch(lq, hr, teacher)
    hr = item.to(device, non_blocking=True)
    with torch.no_grad():
        ctx.degrader.reseed(_batch_seed(ctx.config, stage, iteration, ctx.placement.rank))
        lq = ctx.degrader(hr)
        teacher = ctx.teacher(lq).clamp(0, 1) if ctx.teacher is not None else None
    return Batch(lq, hr, teacher)


def _batch_seed(config: TrainConfig, stage: str, iteration: int, rank: int) -> int:
    return (config.seed * 1_000_003 + (iteration * 64 + rank) * 2 + (stage == "gan")) % 2**63


def run_stage(
    ctx: RunContext, stage: Stage, start: int, on_validation: Callable[[], None] | None = None
) -> dict[str, float]:
    """Train `stage` from iteration `start` to its end; returns the last validation scores."""
    config, placement = ctx.config, ctx.placement
    total = stage.iterations
    # Each stage draws its own patches: offset the dataset indices by the stage.
    sampler = IterationSampler(
        start + stage_offset(config, stage.name),
        total + stage_offset(config, stage.name),
        config.data.batch_size,
        placement.rank,
        placement.world_size,
    )
    loader = DataLoader(
        ctx.dataset,
        batch_sampler=sampler,
        num_workers=config.data.workers,
        pin_memory=placement.device.type == "cuda",
        persistent_workers=False,
    )
    desc = f"{config.name} {stage.name}"
    bar = tqdm(total=total, initial=start, desc=desc, disable=not placement.is_main, dynamic_ncols=True)
    scores: dict[str, float] = {}
    every = config.validation.every
    for iteration, item in zip(range(start, total), loader, strict=False):
        batch = make_batch(ctx, stage.name, iteration, item)
        lr = stage.set_lr(iteration)
        logs = stage.step(batch)
        done = iteration + 1
        if placement.is_main and (done % LOG_EVERY == 0 or done == total):
            step = stage_offset(config, stage.name) + done
            ctx.log({"kind": "train", "stage": stage.name, "iteration": done, "step": step, "lr": lr, **logs})
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == total:
            save_stage_checkpoint(ctx, stage, done, {"ema_updates": stage.ema.updates})
        if (every and done % every == 0) or done == total:
            scores = validate(ctx, stage, done) or scores
            if on_validation is not None and placement.is_main:
                on_validation()
            barrier(placement)
    bar.close()
    return scores
