"""`image-enhancer enhance --cluster --faces` on a real one-machine Ray cluster (2 CPUs): the workers run
the face pass after the enhancement. With the identity face model the files are the local batch's
without faces, byte for byte; with a random-weight GFPGAN only the face changes, and a photo without a
face is left as the enhancement made it. Faces only runs no enhancement model.

The cluster starts in this module with a data folder holding the test face models, which its workers
inherit. Skipped without Ray, except under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from face_models import IDENTITY, RANDOM_GFPGAN, face_models_folder, home_with
from local_ray import ray_or_skip, start_local_ray
from PIL import Image
from skimage import data

from image_enhancer.cli import main
from image_enhancer.paths import HOME_ENV

FAST_MODEL = "realesr-animevideov3"
FACE = (55, 55, 152, 180)  # the astronaut's face in portrait.png (x1, y1, x2, y2)


@pytest.fixture(scope="module")
def ray_with_faces(model_store, tmp_path_factory: pytest.TempPathFactory):
    ray = ray_or_skip()
    models = face_models_folder(tmp_path_factory.mktemp("face-models"))
    home = home_with(tmp_path_factory.mktemp("data") / "home", models)
    before = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(home)  # before Ray starts: its workers inherit it
    start_local_ray(ray)
    try:
        yield
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = before


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:256, 120:376]).save(folder / "portrait.png")
    Image.fromarray(data.coffee()[:96, :128]).save(folder / "cup.png")
    return folder


def _run(photos: Path, out: Path, *extra: str) -> int:
    return main(["enhance", str(photos), "-o", str(out), "-m", FAST_MODEL, "-s", "2", "--device", "cpu",
                 *extra])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_cluster_runs_the_face_pass_after_the_enhancement(ray_with_faces, photos, tmp_path, capsys):
    local = tmp_path / "local"
    assert _run(photos, local) == 0
    same = tmp_path / "identity"
    assert _run(photos, same, "--cluster", "auto", "--faces", "--face-model", IDENTITY) == 0
    err = capsys.readouterr().err
    assert "portrait.png: faces: restored 1 of 1 face" in err and "cup.png: faces: no face found" in err
    for name in ("portrait.png", "cup.png"):
        assert (same / name).read_bytes() == (local / name).read_bytes(), name

    restored = tmp_path / "gfpgan"
    assert _run(photos, restored, "--cluster", "auto", "--faces", "--face-model", RANDOM_GFPGAN,
                "--face-strength", "1") == 0
    assert (restored / "cup.png").read_bytes() == (local / "cup.png").read_bytes()
    after, before = _pixels(restored / "portrait.png"), _pixels(local / "portrait.png")
    changed = np.argwhere((after != before).any(axis=2))
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    x1, y1, x2, y2 = (2 * v for v in FACE)
    assert x1 - 24 <= left and right <= x2 + 24 and y1 - 48 <= top and bottom <= y2 + 24
    assert len(changed) > 0.3 * (x2 - x1) * (y2 - y1)


def test_cluster_faces_only_keeps_the_size(ray_with_faces, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["enhance", str(photos), "-o", str(out), "--device", "cpu", "--cluster", "auto",
                 "--faces-only", "--face-model", IDENTITY])
    assert code == 0, capsys.readouterr().err
    for name in ("portrait.png", "cup.png"):
        assert np.array_equal(_pixels(out / name), _pixels(photos / name)), name
    missing = main(["enhance", str(photos), "-o", str(tmp_path / "none"), "--cluster", "auto", "--faces",
                    "--face-model", "nobody"])
    assert missing == 2 and "unknown face model 'nobody'" in capsys.readouterr().err
