"""Checkpoints without pickle: tensors in one safetensors file, everything else in a JSON file.

A checkpoint is `<run>/checkpoints/<stage>_<iteration>.safetensors` + `.json`; `latest.json` names
the newest complete one (written last, atomically), so a run killed mid-save resumes from the one
before. Optimiser state is flattened to `optim.<name>.<param index>.<field>` tensors plus JSON
hyper-parameters.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from image_enhancer.safe_json import load_json


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match the run."""


@dataclass
class Checkpoint:
    stage: str
    iteration: int
    modules: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    for name, state in ckpt.modules.items():
        for key, value in state.items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
    optim_meta: dict[str, Any] = {}
    for name, state in ckpt.optimizers.items():
        scalars: dict[str, dict[str, Any]] = {}
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                if isinstance(value, Tensor):
                    tensors[f"optim.{name}.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        optim_meta[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    meta = {"stage": ckpt.stage, "iteration": ckpt.iteration, "optimizers": optim_meta, "extra": ckpt.extra}
    return tensors, meta


def save_checkpoint(directory: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write a checkpoint, point `latest.json` at it, and delete all but the `keep` newest."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{ckpt.stage}_{ckpt.iteration:08d}"
    tensors, meta = _flatten(ckpt)
    save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp = directory / "latest.json.tmp"
    tmp.write_text(json.dumps({"checkpoint": stem}), encoding="utf-8")
    os.replace(tmp, directory / "latest.json")
    # Oldest first by write time (names sort by stage, not by age).
    stems = [p.stem for p in sorted(directory.glob("*_*.json"), key=lambda p: p.stat().st_mtime_ns)]
    stems = [s for s in stems if s != stem] + [stem]
    for old in stems[:-keep] if keep > 0 else []:
        for suffix in (".safetensors", ".json"):
            (directory / f"{old}{suffix}").unlink(missing_ok=True)
    return directory / f"{stem}.safetensors"


def load_latest(directory: Path) -> Checkpoint | None:
    """The checkpoint `latest.json` names, or None when the run has none yet."""
    pointer = directory / "latest.json"
    if not pointer.is_file():
        return None
    try:
        stem = load_json(pointer, max_bytes=4096)["checkpoint"]
        meta = load_json(directory / f"{stem}.json", max_bytes=64 << 20)  # optimizer scalars per tensor
        tensors = load_file(str(directory / f"{stem}.safetensors"), device="cpu")
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot read the latest checkpoint in {directory}: {exc}") from exc
    ckpt = Checkpoint(stage=meta["stage"], iteration=int(meta["iteration"]), extra=meta.get("extra", {}))
    for key, value in tensors.items():
        kind, name, rest = key.split(".", 2)
        if kind == "module":
            ckpt.modules.setdefault(name, {})[rest] = value
    for name, optim in meta["optimizers"].items():
        state: dict[int, dict[str, Any]] = {}
        prefix = f"optim.{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field_name = key[len(prefix) :].split(".", 1)
                state.setdefault(int(index), {})[field_name] = value
        for index, scalars in optim["scalars"].items():
            state.setdefault(int(index), {}).update(scalars)
        ckpt.optimizers[name] = {"state": state, "param_groups": optim["param_groups"]}
    return ckpt
