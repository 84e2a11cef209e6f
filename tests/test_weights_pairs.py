"""Strength on any compatible pair: declared by the user, listed with strength, blended, and refused
clearly when the two models cannot blend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.SPAN import SPAN

from image_enhancer.cli import main
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.models import load_model
from image_enhancer.server.app import serve
from image_enhancer.weights.interpolation import IncompatiblePairError, interpolate
from image_enhancer.weights.pairs import PAIR_SUFFIX
from image_enhancer.weights.safe_load import load_state_dict
from image_enhancer.weights.store import ModelNotFoundError, ModelStore


def _save(network: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, path)


@pytest.fixture()
def folder(tmp_path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(5)
    _save(Compact(num_feat=8, num_conv=2, upscale=2), models / "soft.safetensors")
    _save(Compact(num_feat=8, num_conv=2, upscale=2), models / "sharp.safetensors")
    _save(Compact(num_feat=16, num_conv=2, upscale=2), models / "wider.safetensors")
    _save(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2), models / "span.safetensors")
    return models


@pytest.fixture()
def store(folder) -> ModelStore:
    return ModelStore(models_dir=folder)


def _output(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.module(x)


def test_a_declared_pair_is_listed_with_strength_and_blends(store, folder):
    path = store.declare_pair("blend", "soft", "sharp")
    assert path == folder / f"blend{PAIR_SUFFIX}"
    info = next(i for i in store.list() if i.name == "blend")
    assert info.installed and info.has_strength and (info.architecture, info.scale) == ("SRVGGNetCompact", 2)
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(_output(store.get("blend", 0.0), x), _output(store.get("soft"), x))
    assert torch.equal(_output(store.get("blend", 1.0), x), _output(store.get("sharp"), x))
    assert torch.equal(_output(store.get("blend"), x), _output(store.get("sharp"), x))  # as a GAN entry
    soft, sharp = load_state_dict(folder / "soft.safetensors"), load_state_dict(folder / "sharp.safetensors")
    expected = load_model(interpolate(soft, sharp, 0.3))
    assert torch.equal(_output(store.get("blend", 0.3), x), _output(expected, x))
    assert store.get("blend", 0.3) is store.get("blend", 0.301)  # one blend per 0.01 of strength
    with pytest.raises(ValueError, match="between 0 and 1"):
        store.get("blend", 1.5)


def test_incompatible_files_name_the_first_mismatching_tensor(store, folder):
    with pytest.raises(IncompatiblePairError) as info:
        store.declare_pair("bad", "soft", "wider")
    message = str(info.value)
    # Files list their tensors sorted by name, so the first to differ is the first conv's bias.
    assert "soft" in message and "wider" in message and "body.0.bias has shape (8,)" in message
    assert "but (16,)" in message
    assert not (folder / f"bad{PAIR_SUFFIX}").exists()


def test_different_architectures_cannot_pair(store):
    with pytest.raises(IncompatiblePairError, match="SRVGGNetCompact.*SPAN"):
        store.declare_pair("bad", "soft", "span")


def test_bad_declarations_are_refused_clearly(store, folder):
    with pytest.raises(ValueError, match="already a model name"):
        store.declare_pair("soft", "soft", "sharp")
    with pytest.raises(ModelNotFoundError, match="unknown model 'missing'"):
        store.declare_pair("blend", "soft", "missing")
    (folder / f"broken{PAIR_SUFFIX}").write_text("{not json")
    assert "broken" not in {i.name for i in store.list()}
    with pytest.raises(ValueError, match="not a pair file"):
        store.get("broken", 0.5)


def test_a_pair_whose_member_was_removed_is_no_longer_listed(store, folder):
    store.declare_pair("blend", "soft", "sharp")
    (folder / "sharp.safetensors").unlink()
    assert "blend" not in {i.name for i in store.list()}
    with pytest.raises(ModelNotFoundError, match="sharp"):
        store.get("blend", 0.5)


def test_the_pair_command(folder, monkeypatch, capsys):
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(folder.parent))
    assert main(["pair", "cli-blend", "--faithful", "soft", "--sharp", "sharp"]) == 0
    assert (folder / f"cli-blend{PAIR_SUFFIX}").is_file()
    assert main(["pair", "cli-bad", "--faithful", "soft", "--sharp", "wider"]) == 2
    assert "body.0.bias" in capsys.readouterr().err


def test_the_server_offers_the_strength_of_a_declared_pair(store):
    store.declare_pair("blend", "soft", "sharp")
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    try:
        assert running.wait_until_ready(60)
        with EnhancerClient(running.address) as client:
            assert next(m for m in client.list_models() if m.name == "blend").has_strength
            pixels = np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8)
            served = client.enhance_array(pixels, model="blend", strength=0.4)
        expected = Enhancer(store, device="cpu").enhance(pixels, EnhanceOptions(model="blend", strength=0.4))
        np.testing.assert_array_equal(served, expected)
    finally:
        running.stop()
