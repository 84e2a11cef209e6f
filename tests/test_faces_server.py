"""The face pass through a real gRPC server on loopback, in the cases the engine's own tests do not
reach: a face across tile boundaries, a face cut by the image's edge with alpha, a 1×1 image, faces only
(no enhancement), and the face models the server lists. The identity restorer must give back exactly
what the enhancement gave; a random-weight GFPGAN must change the face and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from face_models import IDENTITY, RANDOM_GFPGAN, face_models_folder, home_with
from PIL import Image
from skimage import data

from image_enhancer.client.core import EnhancerError, ProgressEvent
from image_enhancer.request import EnhanceOptions

MODEL = "realesr-animevideov3"
# The astronaut's face in the 256² crop below (x1, y1, x2, y2), read off the photo.
FACE = (55, 55, 152, 180)
TILE = 64  # tile cores at 64 and 128 px: the face straddles two columns and two rows of tiles


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:256, 120:376])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_models_folder(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="module")
def address(model_store, models_dir):
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    store = ModelStore(model_store.manifest, weights_dir=model_store.weights_dir, models_dir=models_dir)
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    yield running.address
    running.stop()


def _enhance(address: str, pixels: np.ndarray, events: list[ProgressEvent] | None = None,
             **options: object) -> np.ndarray:
    from image_enhancer.client.grpc_client import EnhancerClient

    with EnhancerClient(address) as client:
        return client.enhance_array(pixels, EnhanceOptions(**{"model": MODEL, **options}),
                                    on_progress=None if events is None else events.append)


def _changed_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the pixels that differ."""
    changed = np.argwhere((a != b).reshape(*a.shape[:2], -1).any(axis=2))
    assert len(changed), "nothing changed"
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    return int(left), int(top), int(right), int(bottom)


def _inside(box: tuple[int, int, int, int], face: tuple[int, int, int, int], margin: int) -> bool:
    x1, y1, x2, y2 = face
    left, top, right, bottom = box
    return x1 - margin <= left and y1 - 2 * margin <= top and right <= x2 + margin and bottom <= y2 + margin


def _count(events: list[ProgressEvent]) -> tuple[int, int]:
    """The final face count event: (restored, found)."""
    counts = [(e.done, e.total) for e in events if e.stage == "faces restored"]
    assert counts, [e.stage for e in events]
    return counts[-1]


def test_a_face_across_tile_boundaries(address, portrait):
    plain = _enhance(address, portrait, scale=1.0, tile=TILE)
    events: list[ProgressEvent] = []
    same = _enhance(address, portrait, events, scale=1.0, tile=TILE, faces=True, face_model=IDENTITY,
                    face_strength=1.0)
    assert np.array_equal(same, plain)  # the identity restorer changes no pixel, tiles or not
    assert _count(events) == (1, 1)
    restored = _enhance(address, portrait, scale=1.0, tile=TILE, faces=True, face_model=RANDOM_GFPGAN,
                        face_strength=1.0)
    box = _changed_box(restored, plain)
    assert _inside(box, FACE, 12), box
    assert box[0] < TILE * 2 < box[2] and box[1] < TILE * 2 < box[3]  # it did straddle the boundaries


def test_a_face_cut_by_the_edge_with_alpha_at_x2(address, portrait):
    edge = portrait[:, 90:]  # the face's left part is outside the image
    alpha = np.linspace(30, 255, edge.shape[0] * edge.shape[1]).reshape(edge.shape[:2]).astype(np.uint8)
    rgba = np.ascontiguousarray(np.dstack([edge, alpha]))
    plain = _enhance(address, rgba, scale=2.0)
    same = _enhance(address, rgba, scale=2.0, faces=True, face_model=IDENTITY, face_strength=1.0)
    assert np.array_equal(same, plain)
    events: list[ProgressEvent] = []
    restored = _enhance(address, rgba, events, scale=2.0, faces=True, face_model=RANDOM_GFPGAN,
                        face_strength=1.0)
    assert _count(events) == (1, 1)
    assert np.array_equal(restored[..., 3], plain[..., 3])  # alpha untouched
    left, top, right, bottom = _changed_box(restored, plain)
    assert left == 0  # the change reaches the edge the face is cut by...
    assert right <= 2 * (FACE[2] - 90) + 24 and top >= 2 * FACE[1] - 60 and bottom <= 2 * FACE[3] + 24


def test_a_one_pixel_image_has_no_face(address):
    pixel = np.array([[[200, 120, 90, 128]]], np.uint8)
    events: list[ProgressEvent] = []
    result = _enhance(address, pixel, events, scale=1.0, faces=True, face_model=RANDOM_GFPGAN)
    assert np.array_equal(result, _enhance(address, pixel, scale=1.0))
    assert _count(events) == (0, 0)


def test_faces_only_restores_without_enhancing(address, portrait):
    events: list[ProgressEvent] = []
    same = _enhance(address, portrait, events, faces=True, faces_only=True, face_model=IDENTITY)
    assert same.shape == portrait.shape and np.array_equal(same, portrait)  # not enhanced at all
    assert "enhancing" not in {e.stage for e in events} and _count(events) == (1, 1)
    restored = _enhance(address, portrait, faces=True, faces_only=True, face_model=RANDOM_GFPGAN,
                        face_strength=1.0, model="no-such-model")  # the enhancement model is not used
    assert _inside(_changed_box(restored, portrait), FACE, 12)
    with pytest.raises(EnhancerError, match="scale must be 1"):
        _enhance(address, portrait, faces=True, faces_only=True, scale=2.0)


def test_the_server_lists_its_face_models(address):
    from image_enhancer.client.grpc_client import EnhancerClient

    with EnhancerClient(address) as client:
        names = client.list_face_models()
    assert RANDOM_GFPGAN in names
    # Only face architectures are offered: a ×1 enhancement model (the identity) can be named, not listed.
    assert IDENTITY not in names and MODEL not in names


def test_the_catalogue_describes_the_face_models_dropped_in(address):
    from image_enhancer.client.lite import LiteClient

    with LiteClient(address) as client:
        listed = client.catalogue()
        names = client.list_face_models()
    faces = {m.name: m for m in listed.face_models}
    assert listed.installed_face_models == names  # the same models, in the same order
    dropped = faces[RANDOM_GFPGAN]
    assert (dropped.architecture, dropped.scale, dropped.installed) == ("GFPGAN", 1, True)
    assert not dropped.installable and dropped.license == "see the file's origin"
    assert dropped.description == f"Faces — GFPGAN from {RANDOM_GFPGAN}.safetensors"
    assert IDENTITY not in faces
    # The manifest's face models are listed too; those not installed say what installing them takes.
    for name in ("gfpgan-1.4", "gfpgan-1.3", "restoreformer"):
        assert faces[name].license == "Apache-2.0"
        assert faces[name].installed or (faces[name].installable and faces[name].download_bytes > 0)


def test_cli_faces_only_keeps_the_size_and_refuses_another_scale(model_store, models_dir, portrait, tmp_path):
    source, target = tmp_path / "portrait.png", tmp_path / "out.png"
    Image.fromarray(portrait).save(source)
    env = {**os.environ, "IMAGE_ENHANCER_HOME": str(home_with(tmp_path / "home", models_dir))}
    command = [sys.executable, "-m", "image_enhancer", "enhance", str(source), "-o", str(target),
               "--device", "cpu", "--faces-only", "--face-model", IDENTITY]
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "restored 1 of 1 face" in run.stderr
    assert np.array_equal(np.asarray(Image.open(target)), portrait)
    refused = subprocess.run([*command, "-s", "2", "--overwrite"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "scale must be 1" in refused.stderr
