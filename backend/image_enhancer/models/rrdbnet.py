"""RRDBNet: the ESRGAN / Real-ESRGAN generator (x4; x2 and x1 through pixel-unshuffle of the input).

State-dict names follow Real-ESRGAN (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_up1`,
`conv_up2`, `conv_hr`, `conv_last`) so official and community files load unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The input is pixel-unshuffled by this factor so the body always works at output/4 resolution.
_UNSHUFFLE = {4: 1, 2: 2, 1: 4}


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside one scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        self.unshuffle = _UNSHUFFLE[scale]
        first_in = in_channels * self.unshuffle**2
        self.conv_first = nn.Conv2d(first_in, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def infer_hyperparameters(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Read every hyperparameter from key names and shapes; KeyError/IndexError if keys are missing."""
    first = state_dict["conv_first.weight"]
    out_channels = int(state_dict["conv_last.weight"].shape[0])
    first_in = int(first.shape[1])
    # Pixel-unshuffle multiplies input channels by 4 (x2) or 16 (x1); the output channel count
    # tells which, as in ESRGAN-family models the two are equal.
    scale, in_channels = 4, first_in
    if first_in == out_channels * 4:
        scale, in_channels = 2, out_channels
    elif first_in == out_channels * 16:
        scale, in_channels = 1, out_channels
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.rdb1\.", k))}
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "scale": scale,
        "num_feat": int(first.shape[0]),
        "num_block": len(blocks),
        "num_grow_ch": int(state_dict["body.0.rdb1.conv1.weight"].shape[0]),
    }


# Old ESRGAN (pre-BasicSR) naming: model.0 = conv_first, model.1.sub.N = RRDB blocks + conv_body,
# then the x4 upsampler / HR convs at fixed Sequential indices.
_OLD_TAIL = {"model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_BODY_END = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")


def rename_old_esrgan(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map the old ESRGAN key naming onto Real-ESRGAN's; other dicts are returned unchanged."""
    if "model.0.weight" not in state_dict:
        return state_dict
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if key.startswith("model.0."):
            renamed[f"conv_first.{leaf}"] = value
        elif m := _OLD_RDB.match(key):
            renamed[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif _OLD_BODY_END.match(key):
            renamed[f"conv_body.{leaf}"] = value
        elif prefix in _OLD_TAIL:
            renamed[f"{_OLD_TAIL[prefix]}.{leaf}"] = value
        else:
            # Unknown key: keep it so strict detection refuses the dict and names what was seen.
            renamed[key] = value
    return renamed
