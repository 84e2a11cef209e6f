"""Losses: pixel (L1 / Charbonnier), adversarial (vanilla GAN on logits), optional VGG perceptual."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from image_enhancer.weights.safe_load import load_state_dict

PixelLoss = Callable[[Tensor, Tensor], Tensor]


def charbonnier(output: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """A smooth L1: sqrt(d² + ε²), robust like L1 but differentiable at 0."""
    return torch.sqrt((output - target) ** 2 + eps * eps).mean()


def pixel_loss(name: str) -> PixelLoss:
    if name == "l1":
        return F.l1_loss
    if name == "charbonnier":
        return charbonnier
    raise ValueError(f"unknown pixel loss {name!r}; use 'l1' or 'charbonnier'")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Real → 1, fake → 0, per pixel of the U-Net discriminator's map."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """The generator wants its outputs judged real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# VGG19 "features" layout; indices match the common state-dict names (features.<i>.weight).
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
# Conv outputs (before ReLU) compared, with their weights, as in Real-ESRGAN's perceptual loss.
_LAYERS = {2: 0.1, 7: 0.1, 16: 1.0, 25: 1.0, 34: 1.0}


class PerceptualLoss(nn.Module):
    """L1 between VGG19 conv features of output and target; weights come from the user's file."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers[:35])
        state = load_state_dict(weights)
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise ValueError(f"{weights.name} is not a VGG19 state dict: missing {', '.join(missing[:4])}")
        self.load_state_dict({k: wanted[k].float() for k in own})
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _LAYERS:
                out.append(x)
        return out

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self._features(target)
        loss = output.new_zeros(())
        for weight, a, b in zip(_LAYERS.values(), self._features(output), target_features, strict=True):
            loss = loss + weight * F.l1_loss(a, b)
        return loss
