"""Key names of ESRGAN-family state dicts: Real-ESRGAN's (our stored form) and spandrel's module's.

Real-ESRGAN names (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`,
`conv_last`) are what our weight files, caches and interpolation use. spandrel's ESRGAN module keeps
the original ESRGAN's sequential names (`model.0`, `model.1.sub.N.RDBK.convM.0`, …), so tensors are
renamed only when they go into or come out of a module, never in stored dicts.
"""

from __future__ import annotations

import re

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
