"""SRVGGNetCompact: Real-ESRGAN's compact model (realesr-general-x4v3, realesr-animevideov3).

A plain chain of 3×3 convs with PReLU, a pixel shuffle, and the nearest-upsampled input added as a
residual. State-dict names: `body.0` (first conv), `body.1` (PReLU), …, `body.2n+2` (last conv).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class SRVGGNetCompact(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if not 1 <= scale <= 4:
            raise ValueError(f"SRVGGNetCompact supports scale 1 to 4, not {scale}")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, out_channels * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest") if self.scale > 1 else x
        return self.upsampler(out) + base


def infer_hyperparameters(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Read every hyperparameter from key names and shapes; KeyError/ValueError if inconsistent."""
    last = max(int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.weight$", k)))
    first = state_dict["body.0.weight"]
    in_channels = int(first.shape[1])
    # The residual adds the upsampled input, so output channels equal input channels.
    out_channels = in_channels
    shuffled = int(state_dict[f"body.{last}.weight"].shape[0])
    scale = math.isqrt(shuffled // out_channels)
    if scale * scale * out_channels != shuffled:
        raise ValueError(f"last conv has {shuffled} channels, not {out_channels}·scale²")
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "scale": scale,
        "num_feat": int(first.shape[0]),
        "num_conv": (last - 2) // 2,
    }
