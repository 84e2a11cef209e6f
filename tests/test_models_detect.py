"""Architecture detection from state dicts: round trips without weights, legacy naming, strictness."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from image_enhancer.models import UnsupportedModelError, load_model
from image_enhancer.models.registry import Architecture, Registry, default_registry
from image_enhancer.models.rrdbnet import RRDBNet
from image_enhancer.models.srvgg import SRVGGNetCompact
from image_enhancer.weights.safe_load import load_state_dict

RRDB_CASES = [
    dict(scale=4, num_block=1, num_feat=64, num_grow_ch=32),
    dict(scale=4, num_block=3, num_feat=32, num_grow_ch=16),
    dict(scale=2, num_block=2, num_feat=64, num_grow_ch=32),
    dict(scale=1, num_block=2, num_feat=24, num_grow_ch=8),
    dict(scale=4, num_block=2, num_feat=32, num_grow_ch=16, in_channels=1, out_channels=1),
    dict(scale=2, num_block=1, num_feat=32, num_grow_ch=16, in_channels=4, out_channels=4),
]
SRVGG_CASES = [
    dict(num_conv=16, num_feat=64, scale=4),
    dict(num_conv=32, num_feat=64, scale=4),
    dict(num_conv=4, num_feat=16, scale=2),
    dict(num_conv=3, num_feat=8, scale=3),
    dict(num_conv=2, num_feat=8, scale=1),
    dict(num_conv=2, num_feat=8, scale=4, in_channels=1, out_channels=1),
]


def _random(module: torch.nn.Module) -> torch.nn.Module:
    # Non-default weights, so a round trip that silently kept the init would be caught.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module.eval()


def _same_network(original: torch.nn.Module, loaded: torch.nn.Module, side: int = 8) -> None:
    channels = next(original.parameters()).shape[1]
    if isinstance(original, RRDBNet):
        channels //= original.unshuffle**2
    x = torch.rand(1, channels, side, side)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


@pytest.mark.parametrize("hp", RRDB_CASES, ids=lambda hp: str(hp))
def test_rrdbnet_round_trip(hp):
    net = _random(RRDBNet(**hp))
    loaded = load_model(net.state_dict())
    d = loaded.descriptor
    assert d.architecture == "RRDBNet"
    for key, value in hp.items():
        assert d.hyperparameters[key] == value
    assert d.scale == hp["scale"]
    assert d.size_multiple == {4: 1, 2: 2, 1: 4}[hp["scale"]]
    _same_network(net, loaded.module)


@pytest.mark.parametrize("hp", SRVGG_CASES, ids=lambda hp: str(hp))
def test_srvgg_round_trip(hp):
    net = _random(SRVGGNetCompact(**hp))
    loaded = load_model(net.state_dict())
    d = loaded.descriptor
    assert d.architecture == "SRVGGNetCompact"
    for key, value in hp.items():
        assert d.hyperparameters[key] == value
    assert d.tile_pad == hp["num_conv"] + 2
    _same_network(net, loaded.module)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize(
    "make",
    [lambda: RRDBNet(scale=2, num_block=2, num_feat=32, num_grow_ch=16), lambda: SRVGGNetCompact(num_conv=5)],
)
def test_round_trip_through_files(tmp_path, suffix, make):
    net = _random(make())
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), path)
    else:
        torch.save(net.state_dict(), path)
    loaded = load_model(load_state_dict(path))
    _same_network(net, loaded.module)


def test_fp16_files_load_as_fp32_cpu_eval():
    net = _random(SRVGGNetCompact(num_conv=2, num_feat=8))
    loaded = load_model({k: v.half() for k, v in net.state_dict().items()})
    params = list(loaded.module.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad for p in params)
    assert not loaded.module.training


def test_training_checkpoint_wrappers_and_prefixes():
    net = _random(RRDBNet(num_block=1, num_feat=16, num_grow_ch=8))
    other = _random(RRDBNet(num_block=1, num_feat=16, num_grow_ch=8))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    # params_ema wins over params, as in Real-ESRGAN's releases.
    wrapped = {"params": other.state_dict(), "params_ema": net.state_dict()}
    _same_network(net, load_model(wrapped).module)
    prefixed = {f"module.{k}": v for k, v in net.state_dict().items()}
    _same_network(net, load_model(prefixed).module)


def _to_old_esrgan(state_dict: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """Write a state dict the way the original ESRGAN code named it."""
    old = {}
    tail = {"conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        if module == "conv_first":
            old[f"model.0.{leaf}"] = value
        elif module == "conv_body":
            old[f"model.1.sub.{blocks}.{leaf}"] = value
        elif module in tail:
            old[f"{tail[module]}.{leaf}"] = value
        else:
            _, block, rdb, conv = module.split(".")
            old[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{leaf}"] = value
    return old


def test_old_esrgan_key_naming():
    net = _random(RRDBNet(num_block=3, num_feat=16, num_grow_ch=8))
    old = _to_old_esrgan(net.state_dict(), blocks=3)
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old
    loaded = load_model(old)
    assert loaded.descriptor.hyperparameters["num_block"] == 3
    _same_network(net, loaded.module)


def _expect_refused(state_dict):
    with pytest.raises(UnsupportedModelError) as info:
        load_model(state_dict)
    return str(info.value)


def test_detectors_refuse_a_missing_tensor():
    sd = RRDBNet(num_block=2, num_feat=16, num_grow_ch=8).state_dict()
    del sd["conv_hr.weight"]
    assert "no known architecture" in _expect_refused(sd)


def test_detectors_refuse_an_extra_tensor():
    sd = SRVGGNetCompact(num_conv=2, num_feat=8).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    _expect_refused(sd)


def test_detectors_refuse_a_wrong_shape():
    sd = RRDBNet(num_block=2, num_feat=16, num_grow_ch=8).state_dict()
    sd["body.1.rdb2.conv3.weight"] = torch.zeros(8, 33, 3, 3)
    _expect_refused(sd)


def test_detectors_refuse_a_gap_in_the_blocks():
    sd = RRDBNet(num_block=3, num_feat=16, num_grow_ch=8).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("body.1.")}
    _expect_refused(sd)


def test_srvgg_without_prelu_parameters_is_refused():
    # A relu variant has no activation tensors, so its conv indices have gaps: not our network.
    sd = SRVGGNetCompact(num_conv=2, num_feat=8).state_dict()
    sd = {k: v for k, v in sd.items() if k not in ("body.1.weight", "body.3.weight", "body.5.weight")}
    _expect_refused(sd)


def test_unrelated_network_is_refused_and_named():
    sd = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict()
    message = _expect_refused(sd)
    assert "0.weight" in message and "RRDBNet" in message and "SRVGGNetCompact" in message


def test_empty_and_non_tensor_dicts_are_refused():
    assert "empty" in _expect_refused({})
    assert "non-tensor" in _expect_refused({"conv_first.weight": [1, 2, 3]})


def test_registry_refuses_duplicates_and_keeps_order():
    registry = default_registry()
    assert registry.names() == ["RRDBNet", "SRVGGNetCompact"]
    with pytest.raises(ValueError, match="already registered"):
        registry.add(next(iter(registry)))
    first: Architecture = next(iter(default_registry()))
    only_rrdb = Registry([first])
    with pytest.raises(UnsupportedModelError):
        load_model(SRVGGNetCompact(num_conv=2, num_feat=8).state_dict(), only_rrdb)


@pytest.mark.parametrize("hp", [dict(num_conv=3, num_feat=8, scale=4), dict(num_conv=5, num_feat=8, scale=2)])
def test_srvgg_tile_pad_is_its_exact_receptive_field(hp):
    """A change just beyond tile_pad leaves the output alone; one pixel closer, it does not."""
    loaded = load_model(_random(SRVGGNetCompact(**hp)).state_dict())
    pad, scale = loaded.descriptor.tile_pad, loaded.descriptor.scale
    side = 3 * pad
    x = torch.rand(1, 3, side, side)
    y = x.clone()
    y[..., -1] += 1.0  # change the last input column only
    with torch.no_grad():
        a, b = loaded.module(x), loaded.module(y)
    untouched = (side - 1 - pad) * scale  # output columns of inputs more than tile_pad away
    assert torch.equal(a[..., :untouched], b[..., :untouched])
    assert not torch.equal(a[..., : untouched + scale], b[..., : untouched + scale])
