"""Restoring faces from the plug-in, in the real GIMP 3.0 and 3.2 (Debian chroots) against a real backend
whose models folder holds a random-weight GFPGAN: the arguments reach the request, the layer's pixels
are the backend's for the same request, the new layer's name says how many faces were restored, faces
only keeps the size and enhances nothing, and a layer without a face says so plainly.

Needs root (chroot). Outside CI the tests skip when that is impossible; under CI=true they fail."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from face_models import RANDOM_GFPGAN, face_models_folder, home_with
from skimage import data

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.request import EnhanceOptions

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gimp"))
from chroot_gimp import (  # noqa: E402
    GIMP_VERSIONS,
    ChrootGimp,
    backend_process,
    build_chroot,
    free_address,
    unavailable,
)

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

MODEL = "realesr-animevideov3"
FACE = (25, 25, 122, 150)  # where the face is in the portrait (x1, y1, x2, y2)
FACES = {"restore-faces": True, "face-model": RANDOM_GFPGAN, "face-strength": 1.0}


@pytest.fixture(scope="module", params=GIMP_VERSIONS, ids=[f"gimp{v}" for v in GIMP_VERSIONS])
def gimp_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def backend_address(model_store: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real backend on the host's loopback with the test face models in its models folder."""
    folder = tmp_path_factory.mktemp("faces-backend")
    home = home_with(folder / "home", face_models_folder(folder / "models"))
    env = {**os.environ, "IMAGE_ENHANCER_HOME": str(home)}
    with backend_process(free_address(), folder / "serve.log", env) as address:
        yield address


@pytest.fixture(scope="module")
def gimp(gimp_version: str, backend_address: str) -> Iterator[ChrootGimp]:
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("running GIMP in a chroot needs root")
    try:
        root = build_chroot(gimp_version)
    except RuntimeError as error:
        unavailable(str(error))
    instance = ChrootGimp(root, backend_address, ["/usr/bin/false"], gimp_version)
    yield instance
    instance.remove()


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[30:190, 150:310])  # the face, 160² around it


def _direct(address: str, pixels: np.ndarray, options: EnhanceOptions) -> np.ndarray:
    with EnhancerClient(address) as client:
        return client.enhance_array(pixels, options)


def _max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def test_restore_faces_after_the_enhancement(gimp: ChrootGimp, backend_address: str, portrait) -> None:
    result = gimp.run_job("faces-x1", portrait, arguments={"model": MODEL, "scale": "x1", **FACES})
    assert result["status"] == "success", result.get("error")
    name = "photo (AI x1, realesr-animevideov3, faces 100 %: 1 restored)"
    assert result["layers"][0] == [name, 160, 160, 0, 0]
    enhanced = gimp.read(result, "new_layer", np.uint8, 3)
    options = EnhanceOptions(model=MODEL, scale=1.0, faces=True, face_model=RANDOM_GFPGAN, face_strength=1.0)
    assert _max_difference(enhanced, _direct(backend_address, portrait, options)) <= 1
    plain = _direct(backend_address, portrait, EnhanceOptions(model=MODEL, scale=1.0))
    assert _max_difference(enhanced, plain) > 8  # the face pass did run


def test_faces_only_keeps_the_size_and_the_alpha(gimp: ChrootGimp, backend_address: str, portrait) -> None:
    alpha = np.full(portrait.shape[:2], 180, np.uint8)
    alpha[:, :10] = 0  # transparent pixels keep their colour and their alpha
    layer = np.ascontiguousarray(np.dstack([portrait, alpha]))
    # The scale asked for is ignored: faces only is always ×1.
    result = gimp.run_job("faces-only", layer, arguments={"scale": "x4", "faces-only": True,
                                                          "face-model": RANDOM_GFPGAN, "face-strength": 0.8})
    assert result["status"] == "success", result.get("error")
    assert result["image"] == [160, 160]
    assert result["layers"][0] == ["photo (AI faces 80 %: 1 restored)", 160, 160, 0, 0]
    restored = gimp.read(result, "new_layer", np.uint8, 4)
    options = EnhanceOptions(faces=True, faces_only=True, face_model=RANDOM_GFPGAN, face_strength=0.8)
    assert _max_difference(restored, _direct(backend_address, layer, options)) <= 1
    assert np.array_equal(restored[..., 3], alpha)
    changed = np.argwhere((restored[..., :3] != portrait).any(axis=2))
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    x1, y1, x2, y2 = FACE
    assert len(changed) > 1000  # the face changed, and nothing but the face
    assert x1 - 12 <= left and right <= x2 + 12 and y1 - 25 <= top and bottom <= y2 + 12


def test_a_layer_without_a_face_says_so(gimp: ChrootGimp, backend_address: str) -> None:
    cup = np.ascontiguousarray(data.coffee()[:64, :64])
    result = gimp.run_job("no-face", cup, arguments={"model": MODEL, "scale": "x1", **FACES})
    assert result["status"] == "success", result.get("error")
    assert result["layers"][0][0] == "photo (AI x1, realesr-animevideov3, faces 100 %: no face found)"
    assert "No face found" in result["output"]
    enhanced = gimp.read(result, "new_layer", np.uint8, 3)
    plain = _direct(backend_address, cup, EnhanceOptions(model=MODEL, scale=1.0))
    assert _max_difference(enhanced, plain) <= 1
