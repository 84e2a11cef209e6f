"""How fast each model runs on this server's device: measured throughput, and the model to suggest.

Clients (the GIMP dialog) turn the throughput into a time estimate before a person commits to a job.
Measurements are kept per device in a small JSON file in the user cache, so an estimate is there from
the first request after a restart; a model that has never run on this device reports 0.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from image_enhancer.weights.store import ModelStore

log = logging.getLogger(__name__)

# Jobs smaller than this are dominated by fixed costs (tiling, transfers), not by the model: not counted.
MIN_MEASURED_PIXELS = 128 * 128
# Weight of the newest measurement: the estimate follows a changed load without jumping on one outlier.
NEWEST_WEIGHT = 0.5


class ModelSpeeds:
    """Output pixels per second for each model on one device, updated from finished jobs."""

    def __init__(self, device_key: str, path: Path | None = None) -> None:
        self._device_key = device_key
        self._path = path
        self._lock = threading.Lock()
        self._rates: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            stored = json.loads(self._path.read_text(encoding="utf-8")).get(self._device_key, {})
            return {str(name): float(rate) for name, rate in stored.items() if float(rate) > 0}
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("ignoring unreadable throughput record %s: %s", self._path, error)
            return {}

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            everything = json.loads(self._path.read_text(encoding="utf-8")) if self._path.is_file() else {}
            if not isinstance(everything, dict):
                everything = {}
        except (OSError, ValueError):
            everything = {}
        everything[self._device_key] = self._rates
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(everything, indent=1, sort_keys=True), encoding="utf-8")
            partial.replace(self._path)
        except OSError as error:  # an estimate is a convenience: never fail a job over it
            log.warning("could not record throughput in %s: %s", self._path, error)

    def record(self, model: str, output_pixels: int, seconds: float) -> None:
        """A finished job: `output_pixels` made in `seconds` of model work (after loading)."""
        if output_pixels < MIN_MEASURED_PIXELS or seconds <= 0:
            return
        measured = output_pixels / seconds
        with self._lock:
            previous = self._rates.get(model)
            self._rates[model] = (
                measured if previous is None else NEWEST_WEIGHT * measured + (1 - NEWEST_WEIGHT) * previous
            )
            self._save()

    def rate(self, model: str) -> float:
        """Output pixels per second, or 0 when the model has not run on this device."""
        with self._lock:
            return self._rates.get(model, 0.0)


def suggested_model(store: ModelStore, on_gpu: bool) -> str:
    """The model a person on this device should start with: the manifest's default (best quality) on a
    GPU; on a CPU the installed model with the smallest weights, since for these network families the
    work per pixel grows with the parameter count."""
    if on_gpu:
        return store.default_model
    installed = [m.name for m in store.manifest.models if store.path_of(m.name).is_file()]
    if not installed:
        return store.default_model
    return min(installed, key=lambda name: store.path_of(name).stat().st_size)
