"""The face pass as a step after the enhancement, for every path that runs the engine (the server's
job queue, the command line, batches, cluster workers): `FacePass(source, result, options)`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_enhancer.engine.enhancer import Progress
from image_enhancer.faces.catalogue import FaceModels
from image_enhancer.faces.detect import shared_detector
from image_enhancer.faces.face_pass import FaceReport, restore_faces
from image_enhancer.request import EnhanceOptions
from image_enhancer.weights.manifest import ModelEntry

log = logging.getLogger(__name__)

#: The progress stages the face pass reports: per face, then the count (done: restored, total: found).
STAGE_RESTORING = "restoring faces"
STAGE_COUNT = "faces restored"


class FacePass:
    """Restores the faces of a result when its request asks for it; models and detector load on first
    use. `last_report` says what the latest call did."""

    def __init__(
        self,
        models_dir: Path | None = None,
        weights_dir: Path | None = None,
        official: tuple[ModelEntry, ...] | None = None,
    ) -> None:
        self._models_dir, self._weights_dir, self._official = models_dir, weights_dir, official
        self._models: FaceModels | None = None
        self._lock = threading.Lock()
        self.last_report: FaceReport | None = None

    @property
    def models(self) -> FaceModels:
        with self._lock:
            if self._models is None:
                self._models = FaceModels(self._models_dir, self._weights_dir, self._official)
            return self._models

    def __call__(
        self,
        source: np.ndarray,
        result: np.ndarray,
        options: EnhanceOptions,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        if not options.faces:
            return result
        name, restorer = self.models.get(options.face_model)
        def per_face(done: int, total: int) -> None:
            if progress is not None:
                progress(Progress(STAGE_RESTORING, done, total))

        restored, report = restore_faces(
            source, result, shared_detector(), restorer, options.face_strength, linear=options.linear,
            progress=per_face, cancelled=cancelled,
        )
        self.last_report = report
        log.info("face pass (%s, strength %.2f): %s", name, options.face_strength, report.message())
        if progress is not None:
            progress(Progress(STAGE_COUNT, report.restored, report.found))
        return restored


def with_faces(
    run: Callable[..., np.ndarray], face_pass: FacePass
) -> Callable[..., np.ndarray]:
    """`run(pixels, options, progress, cancelled)` followed by the face pass; with `faces_only` the face
    pass alone, on the input."""

    def enhance(
        pixels: np.ndarray,
        options: EnhanceOptions,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        result = pixels if options.faces_only else run(pixels, options, progress, cancelled)
        return face_pass(pixels, result, options, progress, cancelled)

    return enhance
