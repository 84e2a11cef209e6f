"""Held-out validation crops and their PSNR/SSIM (Y channel), with bicubic as the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ValidationConfig
from .data import open_source, random_crop
from .degradations import DegradationConfig, Degrader, bicubic_downscale
from .metrics import psnr_y, sharpness, ssim_y


@dataclass
class Scores:
    psnr: float
    ssim: float
    sharpness: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}psnr": self.psnr, f"{prefix}ssim": self.ssim, f"{prefix}sharpness": self.sharpness}


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class ValidationSet:
    """Fixed (LR, HR) pairs from held-out images: seeded random crops, or whole images when
    `crop_size` is 0 (trimmed to a multiple of the scale)."""

    def __init__(
        self, config: ValidationConfig, scale: int, seed: int, degradation: DegradationConfig | None = None
    ) -> None:
        sources = [s for s in (open_source(c) for c in config.sources) if s is not None]
        if not sources:
            raise ValueError("validation.sources lists no image folder to validate on")
        self.scale = scale
        gen = torch.Generator().manual_seed(seed + 7919)
        images = [(source, i) for source in sources for i in range(len(source))]
        self.hr: list[Tensor] = []
        for k in range(config.crops if config.crop_size else len(images)):
            source, index = images[k % len(images)]
            image = source.load(index)
            if config.crop_size:
                image = random_crop(image, config.crop_size, gen)
            else:
                h, w = image.shape[-2:]
                image = image[:, : h - h % scale, : w - w % scale]
            self.hr.append(image.float() / 255.0)
        degrader = Degrader(degradation, scale, seed=seed + 104729) if config.degradation == "train" else None
        if degrader is not None and degradation is not None:
            self.lr = [degrader(hr[None])[0] for hr in self.hr]
        else:
            self.lr = [bicubic_downscale(hr[None], scale)[0] for hr in self.hr]
        self.bicubic = self.score_outputs([bicubic_upscale(lr[None], scale)[0] for lr in self.lr])

    def score_outputs(self, outputs: list[Tensor]) -> Scores:
        border = self.scale
        pairs = list(zip(outputs, self.hr, strict=True))
        n = len(pairs)
        psnr = sum(psnr_y(out, hr, border) for out, hr in pairs) / n
        ssim = sum(ssim_y(out, hr, border) for out, hr in pairs) / n
        sharp = sum(sharpness(out) for out, _ in pairs) / n
        return Scores(psnr, ssim, sharp)

    @torch.no_grad()
    def run(self, model: nn.Module, device: torch.device, inputs: list[Tensor] | None = None) -> list[Tensor]:
        """The model's outputs for the set's LR inputs (or for `inputs`, e.g. damaged versions)."""
        was_training = model.training
        model.eval()
        outputs = [model(lr[None].to(device)).float().clamp(0, 1).cpu()[0] for lr in inputs or self.lr]
        model.train(was_training)
        return outputs

    def evaluate(self, model: nn.Module, device: torch.device) -> Scores:
        return self.score_outputs(self.run(model, device))
