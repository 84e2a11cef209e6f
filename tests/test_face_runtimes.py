"""The face pass's networks on OpenVINO: the same faces and the same restoration as on PyTorch, and
PyTorch, with a log line, wherever OpenVINO is missing or refuses a network."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from face_models import random_gfpgan, random_restoreformer
from PIL import Image
from skimage import data
from spandrel.architectures.GFPGAN import GFPGAN

from image_enhancer.faces.detect import FaceDetector
from image_enhancer.faces.face_pass import find_faces, restore_faces
from image_enhancer.faces.restorer import load_restorer
from image_enhancer.runtimes.cpu_network import CpuNetwork

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    return {runtime: FaceDetector(runtime) for runtime in ("pytorch", "openvino")}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_auto_runs_the_detector_and_the_restorers_on_openvino():
    assert FaceDetector().runtimes == ("openvino",) * 3
    assert load_restorer(random_gfpgan()).network.asked == "openvino"
    assert load_restorer(random_restoreformer(32, 256, 1)).network.asked == "openvino"


def _crowd(astronaut: np.ndarray) -> np.ndarray:
    face = np.asarray(Image.fromarray(astronaut[40:200, 150:300]).resize((45, 48)))
    return np.tile(face, (4, 5, 1))  # 20 faces


@pytest.mark.parametrize("case", ["512", "1024", "odd-crop", "crowd"])
def test_detection_finds_the_same_faces_on_both_runtimes(detectors, astronaut, case):
    image = {
        "512": astronaut,
        "1024": np.asarray(Image.fromarray(astronaut).resize((1024, 1024), Image.BICUBIC)),
        "odd-crop": np.ascontiguousarray(astronaut[3:, 7:-2]),  # odd sides: every pyramid level differs
        "crowd": _crowd(astronaut),
    }[case]
    assert detectors["openvino"].runtimes == ("openvino",) * 3
    torch_faces = find_faces(detectors["pytorch"], image)
    ov_faces = find_faces(detectors["openvino"], image)
    assert len(torch_faces) == len(ov_faces) >= 1
    boxes = np.array([f.box for f in ov_faces])
    for face in torch_faces:  # matched by position: faces of one size may come in either order
        nearest = int(np.argmin(np.abs(boxes - face.box).max(axis=1)))
        assert np.abs(boxes[nearest] - face.box).max() < 1.0
        assert np.abs(ov_faces[nearest].landmarks - face.landmarks).max() < 1.0


@pytest.mark.parametrize("architecture", ["GFPGAN", "RestoreFormer"])
def test_openvino_restorer_restores_a_real_face_within_a_level_of_pytorch(detectors, astronaut, architecture):
    state = random_gfpgan() if architecture == "GFPGAN" else random_restoreformer(32, 256, 1)
    on_torch, on_openvino = load_restorer(state, "pytorch"), load_restorer(state, "openvino")
    assert on_openvino.architecture == architecture
    assert on_openvino.network.prepare() == "openvino" and on_torch.network.prepare() == "pytorch"
    detector = detectors["pytorch"]
    expected, report = restore_faces(astronaut, astronaut, detector, on_torch, strength=1.0)
    got, _ = restore_faces(astronaut, astronaut, detector, on_openvino, strength=1.0)
    assert report.restored == 1 and not np.array_equal(expected, astronaut)  # the face did change
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def tiny_gfpgan() -> GFPGAN:
    torch.manual_seed(0)
    return GFPGAN(out_size=32, num_style_feat=32, channel_multiplier=1, decoder_load_path=None,
                  fix_decoder=False, num_mlp=2, input_is_latent=True, different_w=True, narrow=0.25,
                  sft_half=True)


class _Call(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_rgb=False, randomize_noise=False)[0]


def test_a_graph_openvino_cannot_compile_runs_on_pytorch_and_the_refusal_is_remembered(tmp_path, caplog):
    """GFPGAN converted for any batch: its modulated convolutions take their weights from the batch,
    which OpenVINO's CPU plugin does not compile (the restorer converts it for one 512² crop)."""
    module = _Call(tiny_gfpgan()).eval()
    crop = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO):
        network = CpuNetwork(module, crop, "tiny GFPGAN", "openvino", swappable=False, cache_dir=tmp_path)
        assert network.prepare() == "pytorch"
    assert "tiny GFPGAN runs on PyTorch: OpenVINO cannot compile" in caplog.text
    with torch.inference_mode():
        assert torch.equal(network(crop)[0], module(crop))
    (record,) = tmp_path.glob("*.json")
    assert "unsupported" in json.loads(record.read_text())

    caplog.clear()  # the next network of that graph is not converted again
    with caplog.at_level(logging.INFO):
        again = CpuNetwork(_Call(tiny_gfpgan()), crop, "tiny GFPGAN", "openvino", swappable=False,
                           cache_dir=tmp_path)
        assert again.prepare() == "pytorch"
    assert "converting" not in caplog.text and "runs on PyTorch" in caplog.text


def test_a_face_model_of_an_architecture_not_verified_on_openvino_stays_on_pytorch(caplog):
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    swinir = SwinIR(upscale=1, in_chans=3, img_size=16, window_size=8, embed_dim=12, depths=[1],
                    num_heads=[2], mlp_ratio=1, upsampler="", resi_connection="1conv")
    with caplog.at_level(logging.INFO):
        restorer = load_restorer(swinir.state_dict(), "openvino")
        assert restorer.network.prepare() == "pytorch"
    assert "runs on PyTorch: not verified on OpenVINO" in caplog.text


def test_without_openvino_the_face_pass_runs_on_pytorch_and_says_so(tmp_path):
    """In a process where `import openvino` fails, as on a platform without its wheel."""
    script = textwrap.dedent(
        """
        import logging, sys
        sys.modules["openvino"] = None  # what an absent package looks like to `import`
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from face_models import random_gfpgan, random_restoreformer
        from skimage import data
        from image_enhancer.faces.detect import FaceDetector
        from image_enhancer.faces.face_pass import find_faces
        from image_enhancer.faces.restorer import load_restorer
        detector = FaceDetector("openvino")
        print("detector", detector.runtimes, len(find_faces(detector, data.astronaut())))
        print("restorer", load_restorer(random_gfpgan()).network.prepare())
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=_env_with_tests_on_path())
    assert run.returncode == 0, run.stderr
    assert "detector ('pytorch', 'pytorch', 'pytorch') 1" in run.stdout
    assert "restorer pytorch" in run.stdout
    assert "MTCNN P-Net runs on PyTorch: OpenVINO is not installed" in run.stdout
    assert "GFPGAN runs on PyTorch: OpenVINO is not installed" in run.stdout


def _env_with_tests_on_path() -> dict[str, str]:
    tests = str(Path(__file__).resolve().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
