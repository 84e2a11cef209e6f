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
    """Fixed (LR, HR) crop pairs drawn once from held-out images with a seed."""

    def __init__(
        self, config: ValidationConfig, scale: int, seed: int, degradation: DegradationConfig | None = None
    ) -> None:
        sources = [s for s in (open_source(c) for c in config.sources) if s is not None]
        if not sources:
            raise ValueError("validation.sources lists no image folder to validate on")
        self.scale = scale
        gen = torch.Generator().manual_seed(seed + 7919)
        images = [(source, i) for source in sources for i in range(len(source))]
        hr = []
        for k in range(config.crops):
            source, index = images[k % len(images)]
            hr.append(random_crop(source.load(index), config.crop_size, gen))
        self.hr = torch.stack(hr)
        if config.degradation == "train" and degradation is not None:
            self.lr = Degrader(degradation, scale, seed=seed + 104729)(self.hr)
        else:
            self.lr = bicubic_downscale(self.hr, scale)
        self.bicubic = self.score_outputs(bicubic_upscale(self.lr, scale))

    def score_outputs(self, outputs: Tensor) -> Scores:
        border = self.scale
        n = len(self.hr)
        psnr = sum(psnr_y(outputs[i], self.hr[i], border) for i in range(n)) / n
        ssim = sum(ssim_y(outputs[i], self.hr[i], border) for i in range(n)) / n
        sharp = sum(sharpness(outputs[i]) for i in range(n)) / n
        return Scores(psnr, ssim, sharp)

    @torch.no_grad()
    def run(self, model: nn.Module, device: torch.device) -> Tensor:
        was_training = model.training
        model.eval()
        outputs = torch.cat([model(lr[None].to(device)).float().clamp(0, 1).cpu() for lr in self.lr])
        model.train(was_training)
        return outputs

    def evaluate(self, model: nn.Module, device: torch.device) -> Scores:
        return self.score_outputs(self.run(model, device))
