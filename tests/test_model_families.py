"""Community architectures without downloads: a small random instance of each family, saved as
.safetensors and as .pth in the user models folder, is detected with its hyperparameters, runs through
the engine tiled as untiled, and is listed and served by a real gRPC server on loopback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.HAT import HAT
from spandrel.architectures.OmniSR import OmniSR
from spandrel.architectures.PLKSR import RealPLKSR
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SwinIR import SwinIR

from image_enhancer.architectures.rrdbnet import to_real_esrgan_names
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.server.app import serve
from image_enhancer.weights.store import ModelStore


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], torch.nn.Module]
    architecture: str
    scale: int
    hyperparameters: dict  # a subset of what detection must find
    # Largest difference tiled vs untiled, in [0, 1] units: float rounding for networks whose influence
    # stays inside a tile's context; a quarter of an 8-bit step where attention windows or group norms
    # reach further; OmniSR's channel attention pools over the whole window, so its tiles differ most.
    tiled_tolerance: float = 1e-5
    stored_names: Callable[[dict], dict] = dict


FAMILIES = [
    Family("esrgan", lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4),
           "RRDBNet", 4, {"num_feat": 8, "num_block": 1, "num_grow_ch": 32},
           stored_names=to_real_esrgan_names),
    Family("compact", lambda: Compact(num_feat=8, num_conv=2, upscale=2),
           "SRVGGNetCompact", 2, {"num_feat": 8, "num_conv": 2}),
    Family("span", lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
           "SPAN", 2, {"feature_channels": 8}),
    Family("realplksr", lambda: RealPLKSR(dim=8, n_blocks=2, upscaling_factor=2, kernel_size=5),
           "RealPLKSR", 2, {"dim": 8, "n_blocks": 2, "kernel_size": 5}, tiled_tolerance=1e-3),
    Family("dat", lambda: DAT(embed_dim=16, depth=[1], num_heads=[2], upscale=2, expansion_factor=2.0),
           "DAT", 2, {"embed_dim": 16, "depth": [1]}, tiled_tolerance=1e-3),
    Family("swinir", lambda: SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                                    upsampler="pixelshuffle", mlp_ratio=2.0),
           "SwinIR", 2, {"embed_dim": 12, "window_size": 4}, tiled_tolerance=1e-3),
    Family("hat", lambda: HAT(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                              compress_ratio=3, squeeze_factor=3, num_feat=8, mlp_ratio=2.0),
           "HAT", 2, {"embed_dim": 12, "window_size": 4}, tiled_tolerance=1e-3),
    Family("omnisr", lambda: OmniSR(num_feat=8, block_num=1, window_size=4, res_num=1, up_scale=2),
           "OmniSR", 2, {"num_feat": 8, "window_size": 4}, tiled_tolerance=0.05),
]
SUFFIXES = (".safetensors", ".pth")


@pytest.fixture(scope="module")
def networks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {f.name: f.build().eval() for f in FAMILIES}


@pytest.fixture(scope="module")
def store(tmp_path_factory, networks) -> ModelStore:
    """Each family dropped into a models folder twice: `NAME-safetensors` and `NAME-pth`."""
    folder: Path = tmp_path_factory.mktemp("models")
    for family in FAMILIES:
        stored = family.stored_names(networks[family.name].state_dict())
        tensors = {k: v.contiguous() for k, v in stored.items()}
        save_file(tensors, folder / f"{family.name}-safetensors.safetensors")
        torch.save(tensors, folder / f"{family.name}-pth.pth")
    return ModelStore(models_dir=folder)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((20, 24, 3), dtype=np.float32)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_detected_with_its_hyperparameters(store, networks, family, suffix):
    loaded = store.get(f"{family.name}-{suffix[1:]}")
    d = loaded.descriptor
    assert (d.architecture, d.scale, d.in_channels) == (family.architecture, family.scale, 3)
    assert family.hyperparameters.items() <= d.hyperparameters.items()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(networks[family.name](x), loaded.module(x))  # the same network, not a look-alike


def test_listed_with_architecture_scale_and_a_readable_description(store):
    infos = {i.name: i for i in store.list()}
    for family in FAMILIES:
        for suffix in SUFFIXES:
            name = f"{family.name}-{suffix[1:]}"
            info = infos[name]
            assert info.installed and (info.architecture, info.scale) == (family.architecture, family.scale)
            assert info.description == f"{family.architecture} ×{family.scale} from {name}{suffix}"
    assert "fp16" not in infos["swinir-pth"].precisions and "bf16" in infos["swinir-pth"].precisions


@pytest.fixture(scope="module")
def enhancer(store) -> Enhancer:
    return Enhancer(store, device="cpu")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_engine_tiled_equals_untiled(enhancer, image, family):
    name = f"{family.name}-safetensors"
    whole = enhancer.enhance(image, EnhanceOptions(model=name, tile=64))
    tiled = enhancer.enhance(image, EnhanceOptions(model=name, tile=16))  # 2 × 2 tiles
    assert whole.shape == tiled.shape == (20 * family.scale, 24 * family.scale, 3)
    assert np.abs(whole - tiled).max() <= family.tiled_tolerance


def test_a_model_that_discourages_tiling_gets_one_tile_when_it_fits(enhancer, image, store):
    assert store.get("swinir-pth").descriptor.tiling == "discouraged"
    automatic = enhancer.enhance(image, EnhanceOptions(model="swinir-pth"))
    whole = enhancer.enhance(image, EnhanceOptions(model="swinir-pth", tile=64))
    tiled = enhancer.enhance(image, EnhanceOptions(model="swinir-pth", tile=16))
    np.testing.assert_array_equal(automatic, whole)
    assert not np.array_equal(automatic, tiled)  # so the single tile is not an accident of the size


@pytest.fixture(scope="module")
def client(store):
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    assert running.wait_until_ready(60)
    with EnhancerClient(running.address) as grpc_client:
        yield grpc_client
    running.stop()


def test_server_lists_every_family(client):
    listed = {m.name: m for m in client.list_models()}
    for family in FAMILIES:
        model = listed[f"{family.name}-pth"]
        assert (model.architecture, model.scale, model.installed) == (family.architecture, family.scale, True)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_server_enhances_with_every_family(client, enhancer, family):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    name = f"{family.name}-pth"
    served = client.enhance_array(pixels, model=name)
    assert served.shape == (12 * family.scale, 16 * family.scale, 3) and served.dtype == np.uint8
    np.testing.assert_array_equal(served, enhancer.enhance(pixels, EnhanceOptions(model=name)))
