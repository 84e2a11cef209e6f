"""Training builds its generators from spandrel's classes, so what we train is what the engine serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from spandrel.architectures.ESRGAN import ESRGAN
from test_training_e2e import tiny_config, write_config

from image_enhancer.architectures.rrdbnet import to_real_esrgan_names
from image_enhancer.models import load_model
from image_enhancer.weights.store import ModelStore
from image_enhancer_training.config import ConfigError, ModelConfig, parse_config
from image_enhancer_training.networks import build_generator, stored_names
from image_enhancer_training.run import train_main

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [
    (ModelConfig(arch="SRVGGNetCompact", scale=4, num_feat=8, num_conv=2), "SRVGGNetCompact"),
    (ModelConfig(arch="RRDBNet", scale=4, num_feat=8, num_block=1), "RRDBNet"),
    (ModelConfig(arch="RRDBNet", scale=2, num_feat=8, num_block=1), "RRDBNet"),
    (ModelConfig(arch="SPAN", scale=2, num_feat=8), "SPAN"),
    (ModelConfig(arch="RealPLKSR", scale=2, num_feat=8, num_block=2), "RealPLKSR"),
]


@pytest.mark.parametrize(
    ("old", "new"),
    [("srvgg", "SRVGGNetCompact"), ("rrdb", "RRDBNet"), ("span", "SPAN"), ("realplksr", "RealPLKSR")],
)
def test_earlier_architecture_names_are_still_accepted(old, new):
    assert ModelConfig(arch=old).arch == new


@pytest.mark.parametrize(("config", "architecture"), CONFIGS, ids=lambda v: getattr(v, "arch", v))
def test_a_trained_generator_is_served_as_the_same_network(config, architecture):
    torch.manual_seed(0)
    generator = build_generator(config).eval()
    loaded = load_model(stored_names(generator.state_dict(), config.arch))
    assert (loaded.descriptor.architecture, loaded.descriptor.scale) == (architecture, config.scale)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(generator(x), loaded.module(x))


def test_rrdb_weights_are_stored_under_real_esrgan_names():
    generator = build_generator(ModelConfig(arch="RRDBNet", num_feat=8, num_block=2))
    state = stored_names(generator.state_dict(), "RRDBNet")
    expected = {"conv_first.weight", "body.1.rdb3.conv5.bias", "conv_body.weight", "conv_up2.bias"}
    assert expected <= state.keys() and len(state) == len(generator.state_dict())


def test_rrdb_starts_from_real_esrgan_named_weights(tmp_path):
    torch.manual_seed(1)
    teacher = ESRGAN(num_filters=8, num_blocks=1).eval()
    path = tmp_path / "init.safetensors"
    save_file(to_real_esrgan_names(teacher.state_dict()), path)
    student = build_generator(ModelConfig(arch="RRDBNet", num_feat=8, num_block=1, init=str(path))).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))
    with pytest.raises(ConfigError, match="does not match model RRDBNet"):
        build_generator(ModelConfig(arch="RRDBNet", num_feat=16, num_block=1, init=str(path)))


def test_the_committed_compact_pair_trains_on_and_serves_the_same_network():
    store = ModelStore()
    x = torch.rand(1, 3, 16, 16)
    for name in ("ie-compact-x4-psnr", "ie-compact-x4-gan"):
        init = str(REPO_ROOT / "weights" / f"{name}.safetensors")
        config = ModelConfig(arch="SRVGGNetCompact", num_feat=32, num_conv=16, init=init)
        generator = build_generator(config).eval()
        with torch.no_grad():
            assert torch.equal(generator(x), store.get(name).module(x))


def _config(tmp_path: Path, **model) -> dict:
    return tiny_config(tmp_path, model=model)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"arch": "unet"}, "model.arch must be one of SRVGGNetCompact, RRDBNet, SPAN, RealPLKSR"),
        ({"arch": "RRDBNet", "num_grow_ch": 16}, "num_grow_ch 32"),
        ({"arch": "RRDBNet", "scale": 3}, "scale 1, 2 or 4"),
    ],
)
def test_unsupported_generators_are_refused_clearly(tmp_path, model, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(tmp_path, **model))


@pytest.mark.parametrize(
    ("model", "architecture", "first_key"),
    [
        ({"arch": "RRDBNet", "num_feat": 8, "num_block": 1}, "RRDBNet", "conv_first.weight"),
        ({"arch": "SPAN", "num_feat": 8}, "SPAN", "conv_1.sk.weight"),
        ({"arch": "RealPLKSR", "num_feat": 8, "num_block": 1}, "RealPLKSR", "feats.0.weight"),
    ],
    ids=lambda v: v["arch"] if isinstance(v, dict) else None,
)
def test_a_training_run_exports_what_the_engine_serves(tmp_path, model, architecture, first_key):
    weights = tmp_path / "weights"
    weights.mkdir()
    config = tiny_config(
        tmp_path,
        model={"scale": 4, **model},
        psnr={"iterations": 2},
        validation={"sources": []},
        export={"name": "tiny", "dir": str(weights), "description": "test model"},
    )
    assert train_main([str(write_config(tmp_path / "run.json", config))]) == 0
    exported = load_file(weights / "tiny-psnr.safetensors")
    assert first_key in exported  # RRDBNet under Real-ESRGAN's names
    assert load_model(exported).descriptor.architecture == architecture
    entry = next(m for m in json.loads((weights / "manifest.json").read_text())["models"])
    assert entry["architecture"] == architecture


def test_init_blend_starts_from_the_weight_average_of_two_fine_tunes(tmp_path):
    torch.manual_seed(3)
    config = ModelConfig(arch="SRVGGNetCompact", num_feat=8, num_conv=2)
    a, b = build_generator(config).state_dict(), build_generator(config).state_dict()
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    blend = {"init": str(tmp_path / "a.safetensors"), "init_blend": str(tmp_path / "b.safetensors")}
    blended = build_generator(
        ModelConfig(arch="SRVGGNetCompact", num_feat=8, num_conv=2, init_blend_weight=0.25, **blend)
    ).state_dict()
    for key in a:
        torch.testing.assert_close(blended[key], 0.75 * a[key] + 0.25 * b[key])
    wider = build_generator(ModelConfig(arch="SRVGGNetCompact", num_feat=12, num_conv=2)).state_dict()
    save_file(wider, tmp_path / "wide.safetensors")
    with pytest.raises(ConfigError, match="cannot be blended"):
        blend["init_blend"] = str(tmp_path / "wide.safetensors")
        build_generator(
            ModelConfig(arch="SRVGGNetCompact", num_feat=8, num_conv=2, init_blend_weight=0.5, **blend)
        )


def test_init_blend_is_checked(tmp_path):
    data = _config(tmp_path, init_blend="b.safetensors", init_blend_weight=0.5)
    with pytest.raises(ConfigError, match="init_blend needs model.init"):
        parse_config(data)
    data = _config(tmp_path, init="a.safetensors", init_blend="b.safetensors", init_blend_weight=1.5)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        parse_config(data)
