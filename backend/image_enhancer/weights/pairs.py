"""Pairs declared by the user: `<name>.pair.json` in the models folder names a faithful and a sharp model.

Any two models of the same architecture and tensor shapes can be blended for the strength control
(weights/interpolation.py); the file only says which two, e.g. `{"faithful": "4x-soft", "sharp": "4x-gan"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from image_enhancer.safe_json import JsonFileError, load_json
from image_enhancer.weights.integrity import write_atomically
from image_enhancer.wire import name_problem

PAIR_SUFFIX = ".pair.json"
# A pair file is two names; anything much larger or nested at all deeply is not one.
MAX_PAIR_BYTES = 64 * 1024
MAX_PAIR_DEPTH = 4
_EXPECTED = 'expected {"faithful": A, "sharp": B}'


@dataclass(frozen=True)
class Pair:
    faithful: str
    sharp: str


def read_pairs(folder: Path) -> dict[str, Pair | str]:
    """Every pair file in `folder` by pair name: the pair, or why the file cannot be used."""
    if not folder.is_dir():
        return {}
    pairs: dict[str, Pair | str] = {}
    for path in sorted(folder.glob(f"*{PAIR_SUFFIX}")):
        name = path.name[: -len(PAIR_SUFFIX)]
        try:
            raw = load_json(path, MAX_PAIR_BYTES, MAX_PAIR_DEPTH)
        except JsonFileError as exc:
            pairs[name] = f"{path.name} is not a pair file ({exc.problem}); {_EXPECTED}"
            continue
        members = (raw.get("faithful"), raw.get("sharp")) if isinstance(raw, dict) else (None, None)
        if all(isinstance(m, str) and m for m in members):
            pairs[name] = Pair(*members)
        else:
            pairs[name] = f"{path.name} is not a pair file; {_EXPECTED}"
    return pairs


def write_pair(folder: Path, name: str, pair: Pair) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name_problem(name):
        raise ValueError(f"{name!r} cannot be a model name")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{PAIR_SUFFIX}"
    text = json.dumps({"faithful": pair.faithful, "sharp": pair.sharp}, indent=2) + "\n"
    write_atomically(path, text.encode("utf-8"))
    return path
