"""RRDBNet (ESRGAN, Real-ESRGAN)'s facts: its key names, and where its tail splits off to run in strips.

Key names of ESRGAN-family state dicts: Real-ESRGAN's (our stored form) and spandrel's module's.

Real-ESRGAN names (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
`conv_last`) are what our weight files, caches and interpolation use. spandrel's ESRGAN module keeps
the original ESRGAN's sequential names (`model.0`, `model.1.sub.N.RDBK.convM.0`, …), so tensors are
renamed only when they go into or come out of a module, never in stored dicts.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

# Real-ESRGAN always has a ×4 trunk (×2 and ×1 models pixel-unshuffle their input first): two
# upsampling convs, then the HR conv and the last conv at fixed sequential positions.
_TAIL = {"conv_first": "model.0", "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8",
         "conv_last": "model.10"}
_TAIL_BACK = {v: k for k, v in _TAIL.items()}
_RDB = re.compile(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_BODY_END = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")


def is_real_esrgan(state_dict: dict[str, Tensor]) -> bool:
    return "conv_first.weight" in state_dict and "body.0.rdb1.conv1.weight" in state_dict


def to_module_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Real-ESRGAN names → spandrel's module names; unknown keys are kept so a strict load names them."""
    blocks = 1 + max(int(m.group(1)) for k in state_dict if (m := _RDB.match(k)))
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if m := _RDB.match(key):
            renamed[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{m.group(4)}"] = value
        elif module == "conv_body":
            renamed[f"model.1.sub.{blocks}.{leaf}"] = value
        elif module in _TAIL:
            renamed[f"{_TAIL[module]}.{leaf}"] = value
        else:
            renamed[key] = value
    return renamed


def to_real_esrgan_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """spandrel's module names of a Real-ESRGAN-shaped network (×4 trunk) → Real-ESRGAN names."""
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if m := _OLD_RDB.match(key):
            renamed[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif _OLD_BODY_END.match(key):
            renamed[f"conv_body.{leaf}"] = value
        elif module in _TAIL_BACK:
            renamed[f"{_TAIL_BACK[module]}.{leaf}"] = value
        else:
            raise ValueError(f"{key} has no Real-ESRGAN name (only ×4-trunk ESRGAN networks have them)")
    return renamed


#: Rows of context RRDBNet's tail needs: its receptive field is 1.25 body pixels (one 3×3 conv at ×2,
#: three at ×4; at ×8 less), so strips with 2 rows of context reproduce the whole tail exactly.
TAIL_HALO = 2


class Body(torch.nn.Module):
    """RRDBNet up to its upsampling tail: pixel-unshuffle (×2 and ×1 models), first conv and trunk."""

    def __init__(self, layers: torch.nn.Sequential, shuffle_factor: int) -> None:
        super().__init__()
        self.layers = layers
        self.shuffle_factor = shuffle_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_factor:
            x = torch.nn.functional.pixel_unshuffle(x, self.shuffle_factor)
        return self.layers(x)


def split_tail(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """spandrel's RRDBNet module as its body and its upsampling tail (from the first upsample on: 64
    channels at the output resolution, most of the memory, run in strips of ``TAIL_HALO``); None for a
    module of another layout."""
    layers = getattr(module, "model", None)
    upsampled = isinstance(layers, torch.nn.Sequential) and len(layers) > 2
    if upsampled and isinstance(layers[2], torch.nn.Upsample):
        return Body(layers[:2], getattr(module, "shuffle_factor", 0) or 0), layers[2:]
    return None
