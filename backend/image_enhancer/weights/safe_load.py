"""Read weight files without ever unpickling arbitrary Python objects.

`.safetensors` holds only tensors by design; `.pth` / `.pt` / `.ckpt` go through `torch.load` with
`weights_only=True`, whose restricted unpickler refuses anything but tensors and plain containers
(a `.pth` from the internet can otherwise run code on load).
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from spandrel import canonicalize_state_dict
from torch import Tensor

from image_enhancer.request import shorten

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".pth", ".pt", ".ckpt"}


class WeightsError(ValueError):
    """A weight file is missing, truncated, corrupt, unsafe or holds no usable tensors."""


def load_state_dict(path: Path | str) -> dict[str, Tensor]:
    """A flat `{name: tensor}` dict from `path`, unwrapped from training-checkpoint containers."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path.name}: unknown weight file type {suffix or '(none)'}; "
            "expected .safetensors, .pth, .pt or .ckpt"
        )
    try:
        info = path.stat()
    except OSError as exc:
        # A dangling link is reported as what it is: the file it names is gone.
        gone = "a link to a file that does not exist" if path.is_symlink() else "weight file does not exist"
        raise WeightsError(f"{path}: {gone}" if isinstance(exc, FileNotFoundError) else
                           f"{path.name}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        # Reading a FIFO or device would block or never end; a folder is not a weight file.
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise WeightsError(f"{path.name}: {kind}, not a weight file")
    if info.st_size == 0:
        raise WeightsError(f"{path.name}: weight file is empty")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{path.name}: cannot be read (permission denied)")
    raw = _read_safetensors(path) if suffix in SAFETENSORS_SUFFIXES else _read_pickle(path)
    try:
        return unwrap(raw)
    except WeightsError as exc:
        raise WeightsError(f"{path.name}: {exc}") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WeightsError(
            f"{path.name}: not a valid safetensors file (truncated or corrupt): {exc}"
        ) from exc


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Raised by the weights-only unpickler when the file asks for any non-tensor object.
        raise WeightsError(
            f"{path.name}: refused to load: the file asks to create Python objects other than tensors, "
            f"which could run code (possibly malicious).{_refused_global(exc)}"
        ) from exc
    except Exception as exc:
        # A damaged file trips the reader anywhere (RuntimeError from the zip reader, IndexError and
        # TypeError from the restricted unpickler, ...); whatever it raises, the file is unusable.
        raise WeightsError(
            f"{path.name}: not a valid PyTorch weight file (truncated or corrupt): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _refused_global(exc: Exception) -> str:
    """The line of torch's message naming the refused object, without its advice to disable safety."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
    return f" {lines[0]}" if lines else ""


def unwrap(raw: Any) -> dict[str, Tensor]:
    """The flat state dict inside a training checkpoint (`params_ema` before `params`, `module.`
    prefixes, ...): the one place keys are unwrapped; the model registry takes the result as it is."""
    if not isinstance(raw, dict):
        raise WeightsError(f"holds a {type(raw).__name__}, not a dictionary of tensors")
    try:
        state_dict = canonicalize_state_dict(raw)
    except (AttributeError, TypeError):  # it assumes names: a key that is a number trips it
        state_dict = raw
    if not isinstance(state_dict, dict) or not state_dict:
        raise WeightsError("holds no tensors")
    unnamed = [shorten(k, 40) for k in state_dict if not isinstance(k, str)]
    if unnamed:
        raise WeightsError(f"keys that are not tensor names: {', '.join(unnamed[:5])}")
    bad = [k[:80] for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"entries that are not tensors: {', '.join(bad[:5])}")
    return dict(state_dict)
