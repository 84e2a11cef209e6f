"""How fast each model runs on this server's device: measured speed, and the model to suggest.

Clients (the GIMP dialog) turn the speed into a time estimate before a person commits to a job. A job's
time is close to affine in its output pixels: a fixed part (setting up the network, a first small batch
that fills the cores badly) plus a part per pixel. Measured on 2 CPU cores with the compact anime model:
80×80 → ×4 took 0.5 s, 200×150 → ×4 0.8 s, 256×256 → ×4 1.0 s; a plain pixels-per-second figure
from the small job would have predicted 2.4 s for the 200×150 one. So the last few jobs' (pixels,
seconds) are kept per model and fitted to `fixed + pixels / rate`.

Measurements are kept per device in a small JSON file in the user cache, so an estimate is there from
the first request after a restart; a model that has never run on the device reports nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from image_enhancer.safe_json import load_json
from image_enhancer.weights.store import ModelStore

log = logging.getLogger(__name__)

KEPT_JOBS = 8  # per model: enough to follow a changed load, few enough to forget an outlier soon
# Sizes closer together than this say little about the per-pixel part: then the fixed part is taken
# as zero and the rate is all pixels over all seconds (which overestimates large jobs, never underestimates).
MIN_SIZE_SPREAD = 1.5


def fit(jobs: list[tuple[int, float]]) -> tuple[float, float]:
    """(output pixels per second, fixed seconds) from (pixels, seconds) of finished jobs; (0, 0) for none."""
    if not jobs:
        return 0.0, 0.0
    pixels = [float(p) for p, _ in jobs]
    seconds = [s for _, s in jobs]
    plain = sum(pixels) / sum(seconds)
    if max(pixels) < MIN_SIZE_SPREAD * min(pixels):
        return plain, 0.0
    mean_p, mean_s = sum(pixels) / len(pixels), sum(seconds) / len(seconds)
    spread = sum((p - mean_p) ** 2 for p in pixels)
    per_pixel = sum((p - mean_p) * (s - mean_s) for p, s in zip(pixels, seconds, strict=True)) / spread
    fixed = mean_s - per_pixel * mean_p
    if per_pixel <= 0 or fixed < 0:  # noise won over the sizes: fall back to the plain figure
        return plain, 0.0
    return 1.0 / per_pixel, fixed


class ModelSpeeds:
    """The recent jobs of each model on one device, and the speed they show."""

    def __init__(self, device_key: str, path: Path | None = None) -> None:
        self._device_key = device_key
        self._path = path
        self._lock = threading.Lock()
        self._jobs: dict[str, list[tuple[int, float]]] = self._load()
        # Models that have run in this process. A model's first job also pays one-time set-up (buffers,
        # kernels chosen for its shapes), so it is kept only when nothing better is known.
        self._warm: set[str] = set()

    def _read(self) -> dict:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            everything = load_json(self._path, max_bytes=1 << 20)  # a few numbers per model and device
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable speed record %s: %s", self._path, error)
            return {}
        return everything if isinstance(everything, dict) else {}

    def _load(self) -> dict[str, list[tuple[int, float]]]:
        jobs = {}
        for model, entries in (self._read().get(self._device_key) or {}).items():
            try:
                kept = [(int(p), float(s)) for p, s in entries if int(p) > 0 and float(s) > 0]
            except (TypeError, ValueError):
                continue  # another layout: measured again from the next job
            if kept:
                jobs[str(model)] = kept[-KEPT_JOBS:]
        return jobs

    def _save(self) -> None:
        if self._path is None:
            return
        everything = self._read()
        everything[self._device_key] = self._jobs
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(everything, indent=1, sort_keys=True), encoding="utf-8")
            partial.replace(self._path)
        except OSError as error:  # an estimate is a convenience: never fail a job over it
            log.warning("could not record model speed in %s: %s", self._path, error)

    def record(self, model: str, output_pixels: int, seconds: float) -> None:
        """A finished job: `output_pixels` made in `seconds` of model work (after loading)."""
        if output_pixels <= 0 or seconds <= 0:
            return
        with self._lock:
            first, known = model not in self._warm, bool(self._jobs.get(model))
            self._warm.add(model)
            if first and known:
                return
            self._jobs[model] = [*self._jobs.get(model, []), (output_pixels, seconds)][-KEPT_JOBS:]
            self._save()

    def speed(self, model: str) -> tuple[float, float]:
        """(output pixels per second, fixed seconds per job); (0, 0) when the model has not run here."""
        with self._lock:
            return fit(self._jobs.get(model, []))


def suggested_model(store: ModelStore, on_gpu: bool) -> str:
    """The model a person on this device should start with: the manifest's default (best quality) on a
    GPU; on a CPU the installed model with the smallest weights, since for these network families the
    work per pixel grows with the parameter count. A model with a strength control is preferred there,
    so the choice does not hang on a few bytes of file header between a pair and its faithful end."""
    if on_gpu:
        return store.default_model
    installed = [m for m in store.manifest.models if store.path_of(m.name).is_file()]
    if not installed:
        return store.default_model
    paired = [m for m in installed if m.pair] or installed
    return min(paired, key=lambda m: store.path_of(m.name).stat().st_size).name
