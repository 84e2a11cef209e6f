"""Weight files are read without unpickling arbitrary objects, and bad files give clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from image_enhancer.weights.safe_load import WeightsError, load_state_dict


class _Payload:
    """A pickle that would create a marker file when unpickled (how a malicious .pth runs code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv_first.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="could run code") as info:
        load_state_dict(path)
    assert "evil.pth" in str(info.value)
    assert not marker.exists()


def test_malicious_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "system-ran"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Shell()}, path)
    with pytest.raises(WeightsError, match="possibly malicious"):
        load_state_dict(path)
    assert not marker.exists()


def _good_pth(path: Path) -> bytes:
    torch.save({"params_ema": {"a.weight": torch.arange(4000, dtype=torch.float32)}}, path)
    return path.read_bytes()


def test_valid_pth_with_wrapper_loads(tmp_path):
    path = tmp_path / "ok.pth"
    _good_pth(path)
    state = load_state_dict(path)
    assert list(state) == ["a.weight"]
    assert torch.equal(state["a.weight"], torch.arange(4000, dtype=torch.float32))


def test_truncated_pth_is_refused(tmp_path):
    data = _good_pth(tmp_path / "ok.pth")
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_state_dict(path)


def test_truncated_safetensors_is_refused(tmp_path):
    good = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(1000)}, good)
    data = good.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-100])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_state_dict(path)


def test_garbage_safetensors_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_state_dict(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_state_dict(path)


def test_missing_file_and_unknown_type_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(tmp_path / "nothing.safetensors")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weight file type"):
        load_state_dict(other)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(2)], "not a dictionary"),
        ({"a": torch.zeros(2), "step": 7}, "not tensors: step"),
        ({}, "no tensors"),
        ({"params": {}}, "no tensors"),
    ],
)
def test_non_tensor_contents_are_refused(tmp_path, content, message):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        load_state_dict(path)


def test_weights_error_is_a_value_error():
    assert issubclass(WeightsError, ValueError)
