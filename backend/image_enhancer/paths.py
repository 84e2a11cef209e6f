"""Where Image Enhancer keeps its files: the per-user cache and the repository's own weights folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOME_ENV = "IMAGE_ENHANCER_HOME"


def user_home() -> Path:
    """The per-user data folder: `$IMAGE_ENHANCER_HOME`, else the platform's cache folder."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        root = Path(base) if base else Path.home() / "AppData" / "Local"
        return root / "image-enhancer"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "image-enhancer"


def backend_log() -> Path:
    """Where a backend started on demand (by the GIMP plug-in or `image-enhancer activate`) logs."""
    return user_home() / "logs" / "backend.log"


def weights_dir() -> Path:
    """Converted third-party weights live here (never in the repository)."""
    return user_home() / "weights"


def runtime_cache_dir() -> Path:
    """Networks converted for the runtimes, each runtime's in a folder named after it."""
    return user_home()


def user_models_dir() -> Path:
    """Community model files dropped here (.safetensors / .pth) are listed next to the manifest's."""
    return user_home() / "models"


def repo_weights_dir() -> Path:
    """The committed `weights/` folder: our own small models and their cards (the manifest ships inside
    the package). Found relative to this file, so it exists in a source checkout or an editable install;
    from a wheel, models that live there are listed as not installed.
    """
    return Path(__file__).resolve().parents[2] / "weights"
