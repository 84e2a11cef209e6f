"""Detection from state dicts through spandrel: round trips without weights, naming, strictness."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from image_enhancer.architectures.rrdbnet import to_module_names, to_real_esrgan_names
from image_enhancer.models import UnsupportedModelError, describe, load_model
from image_enhancer.models.registry import NOT_SERVED, served_architectures
from image_enhancer.weights.safe_load import load_state_dict, unwrap

# (our hyperparameters, spandrel's ESRGAN arguments): ×2 and ×1 pixel-unshuffle their input.
RRDB_CASES = [
    (dict(scale=4, num_block=1, num_feat=64), dict(in_nc=3, out_nc=3, scale=4)),
    (dict(scale=4, num_block=3, num_feat=32), dict(in_nc=3, out_nc=3, scale=4)),
    (dict(scale=2, num_block=2, num_feat=16), dict(in_nc=12, out_nc=3, scale=4, shuffle_factor=2)),
    (dict(scale=1, num_block=1, num_feat=24), dict(in_nc=48, out_nc=3, scale=4, shuffle_factor=4)),
    (dict(scale=4, num_block=2, num_feat=16, in_channels=1, out_channels=1),
     dict(in_nc=1, out_nc=1, scale=4)),
    (dict(scale=2, num_block=1, num_feat=16, in_channels=4, out_channels=4),
     dict(in_nc=16, out_nc=4, scale=4, shuffle_factor=2)),
]
SRVGG_CASES = [
    dict(num_conv=16, num_feat=64, scale=4),
    dict(num_conv=4, num_feat=16, scale=2),
    dict(num_conv=3, num_feat=8, scale=3),
    dict(num_conv=2, num_feat=8, scale=1),
    dict(num_conv=2, num_feat=8, scale=4, in_channels=1, out_channels=1),
]


def _esrgan(hp: dict, args: dict) -> ESRGAN:
    return _random(ESRGAN(num_filters=hp["num_feat"], num_blocks=hp["num_block"], **args))


def _compact(hp: dict) -> Compact:
    channels = hp.get("in_channels", 3)
    return _random(Compact(num_in_ch=channels, num_out_ch=hp.get("out_channels", 3),
                           num_feat=hp["num_feat"], num_conv=hp["num_conv"], upscale=hp["scale"]))


def _random(module: torch.nn.Module) -> torch.nn.Module:
    # Non-default weights, so a round trip that silently kept the init would be caught.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module.eval()


def _same_network(original: torch.nn.Module, loaded: torch.nn.Module, channels: int = 3) -> None:
    x = torch.rand(1, channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


@pytest.mark.parametrize(("hp", "args"), RRDB_CASES, ids=lambda v: str(v))
def test_rrdbnet_round_trip_from_real_esrgan_names(hp, args):
    net = _esrgan(hp, args)
    stored = to_real_esrgan_names(net.state_dict())
    assert "conv_first.weight" in stored and "body.0.rdb1.conv1.weight" in stored
    loaded = load_model(stored)
    d = loaded.descriptor
    assert d.architecture == "RRDBNet"
    assert d.hyperparameters == {"in_channels": 3, "out_channels": 3, "num_grow_ch": 32, **hp}
    assert d.scale == hp["scale"]
    assert d.size_multiple == (1 if hp["scale"] == 4 else 4)  # spandrel's: the unshuffle grid, rounded up
    assert d.tile_pad == 32 * {4: 1, 2: 2, 1: 4}[hp["scale"]]
    _same_network(net, loaded.module, hp.get("in_channels", 3))
    assert describe(stored) == d


def test_real_esrgan_names_round_trip_exactly():
    net = _esrgan(dict(num_feat=16, num_block=2), dict(in_nc=3, out_nc=3, scale=4))
    module_names = net.state_dict()
    assert to_module_names(to_real_esrgan_names(module_names)).keys() == module_names.keys()


@pytest.mark.parametrize("args", [dict(scale=2), dict(scale=8), dict(scale=4, plus=True)], ids=str)
def test_older_esrgan_layouts_are_served_under_their_own_name(args):
    net = _random(ESRGAN(num_filters=16, num_blocks=1, **args))
    loaded = load_model(net.state_dict())
    d = loaded.descriptor
    # Not Real-ESRGAN's RRDBNet (a ×4 trunk): tools that rely on that layout must not take these for it.
    assert (d.architecture, d.scale) == ("ESRGAN", args["scale"])
    assert d.hyperparameters["plus"] == args.get("plus", False) and d.tile_pad == 32
    _same_network(net, loaded.module)


def test_original_esrgan_naming_loads_too():
    net = _esrgan(dict(num_feat=16, num_block=3), dict(in_nc=3, out_nc=3, scale=4))
    old = net.state_dict()
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old
    loaded = load_model(old)
    assert loaded.descriptor.hyperparameters["num_block"] == 3
    _same_network(net, loaded.module)


@pytest.mark.parametrize("hp", SRVGG_CASES, ids=lambda hp: str(hp))
def test_srvgg_round_trip(hp):
    net = _compact(hp)
    loaded = load_model(net.state_dict())
    d = loaded.descriptor
    assert d.architecture == "SRVGGNetCompact"
    assert d.hyperparameters == {"in_channels": 3, "out_channels": 3, **hp}
    assert d.tile_pad == hp["num_conv"] + 2
    _same_network(net, loaded.module, hp.get("in_channels", 3))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_through_files(tmp_path, suffix):
    net = _compact(dict(num_conv=5, num_feat=16, scale=4))
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), path)
    else:
        torch.save(net.state_dict(), path)
    _same_network(net, load_model(load_state_dict(path)).module)


def test_fp16_files_load_as_fp32_cpu_eval():
    net = _compact(dict(num_conv=2, num_feat=8, scale=4))
    loaded = load_model({k: v.half() for k, v in net.state_dict().items()})
    params = list(loaded.module.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad for p in params)
    assert not loaded.module.training


def test_training_checkpoint_wrappers_and_prefixes():
    net = _compact(dict(num_conv=2, num_feat=8, scale=4))
    other = {k: v + 1.0 for k, v in net.state_dict().items()}
    # params_ema wins over params, as in Real-ESRGAN's releases.
    _same_network(net, load_model(unwrap({"params": other, "params_ema": net.state_dict()})).module)
    _same_network(net, load_model(unwrap({f"module.{k}": v for k, v in net.state_dict().items()})).module)


def _expect_refused(state_dict):
    with pytest.raises(UnsupportedModelError) as info:
        load_model(state_dict)
    return str(info.value)


def _real_esrgan(blocks: int = 2) -> dict[str, torch.Tensor]:
    return to_real_esrgan_names(ESRGAN(num_filters=16, num_blocks=blocks).state_dict())


def test_a_missing_tensor_is_refused_and_named():
    sd = _real_esrgan()
    del sd["conv_hr.weight"]
    message = _expect_refused(sd)
    assert "ESRGAN" in message and "model.8.weight" in message


def test_an_extra_tensor_is_refused():
    sd = Compact(num_conv=2, num_feat=8).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    assert "extra.weight" in _expect_refused(sd)


def test_a_wrong_shape_is_refused():
    sd = _real_esrgan()
    sd["body.1.rdb2.conv3.weight"] = torch.zeros(32, 33, 3, 3)
    assert "size mismatch" in _expect_refused(sd)


@pytest.mark.parametrize("damage", ["scalar", "missing"])
def test_a_damaged_file_of_any_family_is_refused_not_crashed_on(damage):
    from spandrel.architectures.SPAN import SPAN

    sd = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2).state_dict()
    for key in [k for k in sd if k.endswith("weight")][:3]:
        if damage == "scalar":
            sd[key] = torch.zeros(())
        else:
            del sd[key]
    with pytest.raises(UnsupportedModelError):
        describe(sd)
    _expect_refused(sd)


def test_a_gap_in_the_blocks_is_refused():
    sd = {k: v for k, v in _real_esrgan(3).items() if not k.startswith("body.1.")}
    _expect_refused(sd)


def test_unrelated_network_is_refused_and_named():
    sd = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict()
    message = _expect_refused(sd)
    assert "0.weight" in message and "ESRGAN" in message and "SPAN" in message


def test_empty_and_non_tensor_dicts_are_refused():
    assert "empty" in _expect_refused({})
    assert "non-tensor" in _expect_refused({"conv_first.weight": [1, 2, 3]})


def test_served_architectures_leave_out_the_ones_that_need_more_than_an_image():
    served = served_architectures()
    for family in ("ESRGAN", "Compact", "SPAN", "PLKSR", "DAT", "SwinIR", "HAT", "OmniSR", "ATD", "DRCT"):
        assert family in served
    assert not set(served) & set(NOT_SERVED)


def test_a_detected_model_that_is_not_served_says_why():
    from spandrel.architectures.DnCNN import DnCNN

    message = _expect_refused(DnCNN(in_nc=1, out_nc=1, nc=8, nb=8).state_dict())
    assert "DnCNN" in message and "call of its own" in message


@pytest.mark.parametrize("hp", [dict(num_conv=3, num_feat=8, scale=4), dict(num_conv=5, num_feat=8, scale=2)])
def test_srvgg_tile_pad_is_its_exact_receptive_field(hp):
    """A change just beyond tile_pad leaves the output alone; one pixel closer, it does not."""
    loaded = load_model(_compact(hp).state_dict())
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


def test_architecture_facts_are_asked_of_one_registry():
    from image_enhancer import architectures
    from image_enhancer.architectures import rrdbnet

    assert architectures.get("RRDBNet") is rrdbnet.ARCHITECTURE
    # spandrel's ESRGAN id holds Real-ESRGAN's RRDBNet (×4 trunk) and the older layouts.
    assert architectures.for_spandrel("ESRGAN", {"scale": 4, "plus": False}) is rrdbnet.ARCHITECTURE
    assert architectures.for_spandrel("ESRGAN", {"scale": 2, "plus": False}) is rrdbnet.ESRGAN
    assert architectures.for_spandrel("RealPLKSR", {}) is None
    plain = architectures.get("RealPLKSR")  # no file of its own: no facts
    assert plain.graph is None and plain.split is None and not plain.verified_on
    assert [a.name for a in architectures.with_graphs()] == ["RRDBNet", "SRVGGNetCompact"]
