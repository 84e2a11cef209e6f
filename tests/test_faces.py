"""The face pass on real photos: detection, exact alignment and paste-back, hostile inputs, and
random-weight GFPGAN end to end through the command line and a real gRPC server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from face_models import face_models_folder, home_with, identity_state_dict
from PIL import Image
from skimage import data
from spandrel.architectures.Compact import Compact

from image_enhancer.faces import geometry
from image_enhancer.faces.detect import FaceDetector
from image_enhancer.faces.face_pass import MAX_FACES, find_faces, restore_faces
from image_enhancer.faces.restorer import load_restorer

# Where the astronaut's face is (x1, y1, x2, y2), read off the photo.
FACE_BOX = (175, 55, 272, 180)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def identity():
    return load_restorer(identity_state_dict())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return face_models_folder(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="module")
def gfpgan(models_dir):
    from image_enhancer.faces.catalogue import FaceModels

    name, restorer = FaceModels(models_dir, models_dir / "none").get("random-gfpgan")
    assert name == "random-gfpgan" and restorer.architecture == "GFPGAN"
    return restorer


def test_detector_finds_the_astronauts_face_and_its_landmarks(detector, astronaut):
    faces = find_faces(detector, astronaut)
    assert len(faces) == 1, [f.box for f in faces]
    x1, y1, x2, y2 = FACE_BOX
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = faces[0].landmarks
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in faces[0].landmarks)
    assert lx < nx < rx and mlx < mrx  # left eye, nose, right eye from left to right
    assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth


def test_no_face_in_a_landscape_or_a_tiny_image(detector):
    assert find_faces(detector, np.asarray(data.coffee())) == []
    assert find_faces(detector, np.zeros((1, 1, 3), np.uint8)) == []


def test_alignment_puts_the_landmarks_on_the_template(detector, astronaut):
    face = find_faces(detector, astronaut)[0]
    to_crop = geometry.similarity(face.landmarks, geometry.template(512))
    mapped = face.landmarks @ to_crop[:, :2].T + to_crop[:, 2]
    assert np.abs(mapped - geometry.template(512)).max() < 25  # five points, four degrees of freedom
    assert abs(to_crop[0, 1] + to_crop[1, 0]) < 1e-9 and abs(to_crop[0, 0] - to_crop[1, 1]) < 1e-9  # no shear


@pytest.mark.parametrize("kind", ["u8", "u16", "float", "gray", "gray-alpha", "rgba"])
def test_identity_restorer_gives_back_the_input_exactly(detector, identity, astronaut, kind):
    image = {
        "u8": astronaut,
        "u16": astronaut.astype(np.uint16) * 257,
        "float": astronaut.astype(np.float32) / 255 * 1.2 - 0.1,  # also beyond [0, 1]
        "gray": astronaut.mean(axis=2).astype(np.uint8),
        "gray-alpha": np.dstack([astronaut.mean(axis=2), np.full(astronaut.shape[:2], 200)]).astype(np.uint8),
        "rgba": np.dstack([astronaut, np.linspace(0, 255, 512 * 512).reshape(512, 512)]).astype(np.uint8),
    }[kind]
    result, report = restore_faces(image, image, detector, identity, strength=1.0)
    assert report.found >= 1
    assert result.dtype == image.dtype and np.array_equal(result, image)


def test_identity_at_two_times_and_at_the_border(detector, identity, astronaut):
    big = astronaut.repeat(2, axis=0).repeat(2, axis=1)
    result, report = restore_faces(astronaut, big, detector, identity, strength=1.0)
    assert report.restored == 1 and np.array_equal(result, big)
    edge = np.ascontiguousarray(astronaut[:, 200:])  # the face cut by the left edge
    result, report = restore_faces(edge, edge, detector, identity, strength=1.0)
    assert np.array_equal(result, edge)


def test_gfpgan_changes_the_face_and_nothing_else(detector, gfpgan, astronaut):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 77, np.uint8)])
    result, report = restore_faces(rgba, rgba, detector, gfpgan, strength=1.0)
    assert report.restored == 1
    changed = np.argwhere((result != rgba).any(axis=2))
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    x1, y1, x2, y2 = FACE_BOX
    assert x1 - 10 <= left and right <= x2 + 10 and y1 - 25 <= top and bottom <= y2 + 10
    assert len(changed) > 0.4 * (x2 - x1) * (y2 - y1)  # the face itself did change
    assert np.array_equal(result[..., 3], rgba[..., 3])  # alpha untouched


def test_face_strength_blends_in_pixel_space(detector, gfpgan, astronaut):
    image = astronaut.astype(np.float32) / 255
    full, _ = restore_faces(image, image, detector, gfpgan, strength=1.0)
    half, _ = restore_faces(image, image, detector, gfpgan, strength=0.5)
    none, _ = restore_faces(image, image, detector, gfpgan, strength=0.0)
    assert np.array_equal(none, image)
    assert np.abs((half - image) - 0.5 * (full - image)).max() < 1 / 255


def test_many_faces_restores_the_largest_and_reports_the_rest(detector, identity, astronaut):
    face = np.asarray(Image.fromarray(astronaut[40:200, 150:300]).resize((45, 48)))
    crowd = np.tile(face, (20, 25, 1))  # 500 faces
    result, report = restore_faces(crowd, crowd, detector, identity, strength=1.0)
    assert report.found > MAX_FACES and report.restored == MAX_FACES
    assert report.over_limit == report.found - MAX_FACES - report.too_small
    assert "beyond the first" in report.message() and np.array_equal(result, crowd)


def test_a_scale_changing_model_is_refused_as_a_face_model():
    from image_enhancer.models.registry import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="keeps the size"):
        load_restorer(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict())


def test_cli_restores_faces_with_a_random_gfpgan(model_store, models_dir, astronaut, tmp_path):
    source, target = tmp_path / "astronaut.png", tmp_path / "out.png"
    Image.fromarray(astronaut).save(source)
    env = {**os.environ, "IMAGE_ENHANCER_HOME": str(home_with(tmp_path / "home", models_dir))}
    command = [sys.executable, "-m", "image_enhancer", "enhance", str(source),
               "-m", "realesr-animevideov3", "-s", "1", "--device", "cpu"]
    faces = ["--faces", "--face-model", "random-gfpgan", "--face-strength", "1"]
    run = subprocess.run([*command, "-o", str(target), *faces], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "restored 1 of 1 face" in run.stderr
    plain = subprocess.run([*command, "-o", str(tmp_path / "p.png")], capture_output=True, text=True, env=env)
    assert plain.returncode == 0, plain.stderr
    with_faces, without = np.asarray(Image.open(target)), np.asarray(Image.open(tmp_path / "p.png"))
    columns = np.argwhere((with_faces != without).any(axis=2))[:, 1]
    assert len(columns) and FACE_BOX[0] - 10 <= columns.min() and columns.max() <= FACE_BOX[2] + 10


def test_server_restores_faces_and_reports_the_count(model_store, models_dir, astronaut, tmp_path):
    from image_enhancer.client.grpc_client import EnhancerClient
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.request import EnhanceOptions
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    store = ModelStore(model_store.manifest, weights_dir=model_store.weights_dir, models_dir=models_dir)
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    try:
        stages = []
        with EnhancerClient(running.address) as client:
            options = EnhanceOptions(model="realesr-animevideov3", scale=1.0, faces=True,
                                     face_model="identity", face_strength=1.0)
            plain = client.enhance_array(astronaut, EnhanceOptions(model="realesr-animevideov3", scale=1.0))
            result = client.enhance_array(astronaut, options, on_progress=lambda *p: stages.append(p))
            assert np.array_equal(result, plain)  # the identity face model changes nothing
            with pytest.raises(Exception, match="unknown face model"):
                client.enhance_array(astronaut, EnhanceOptions(faces=True, face_model="nobody", scale=1.0,
                                                               model="realesr-animevideov3"))
        assert any("faces restored" in str(p) for p in stages), stages
    finally:
        running.stop()
