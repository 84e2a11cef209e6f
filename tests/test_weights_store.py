"""ModelStore: names to ready networks, hash checks, strength blending and caching."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from image_enhancer.weights.integrity import sha256_file
from image_enhancer.weights.manifest import parse_manifest
from image_enhancer.weights.safe_load import WeightsError
from image_enhancer.weights.store import ModelNotFoundError, ModelNotInstalledError, ModelStore


def _entry(name: str, sha: str, **extra) -> dict:
    return {
        "name": name,
        "architecture": "SRVGGNetCompact",
        "scale": 4,
        "description": f"tiny {name}",
        "license": "BSD-3-Clause",
        "source": "test",
        "files": [{"role": "weights", "filename": f"{name}.safetensors", "sha256": sha}],
        **extra,
    }


@pytest.fixture()
def tiny_store(tmp_path):
    """A store over tiny random networks: a PSNR/GAN pair, a model without pair, one not installed."""
    torch.manual_seed(3)
    entries = []
    for name in ("soft", "sharp", "plain"):
        net = Compact(num_conv=2, num_feat=8)
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
        extra = {"pair": {"psnr": "soft", "gan": "sharp"}, "default": True} if name == "sharp" else {}
        entries.append(_entry(name, sha256_file(path), **extra))
    entries.append(_entry("absent", "0" * 64))
    manifest = parse_manifest({"models": entries})
    return ModelStore(manifest, weights_dir=tmp_path, max_loaded=3, models_dir=tmp_path / "models")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def test_list_reports_installation_and_strength(tiny_store):
    infos = {i.name: i for i in tiny_store.list()}
    assert infos["sharp"].installed and infos["sharp"].has_strength and infos["sharp"].is_default
    assert not infos["plain"].has_strength
    assert not infos["absent"].installed
    assert tiny_store.default_model == "sharp"


def test_strength_blends_the_pair_and_endpoints_are_exact(tiny_store):
    soft, sharp = _weights(tiny_store.get("soft")), _weights(tiny_store.get("sharp"))
    at0 = _weights(tiny_store.get("sharp", strength=0.0))
    at1 = _weights(tiny_store.get("sharp", strength=1.0))
    mid = _weights(tiny_store.get("sharp", strength=0.3))
    for k in soft:
        assert torch.equal(at0[k], soft[k])
        assert torch.equal(at1[k], sharp[k])
        torch.testing.assert_close(mid[k], 0.7 * soft[k] + 0.3 * sharp[k])


def test_loaded_and_blended_models_are_cached(tiny_store):
    assert tiny_store.get("sharp") is tiny_store.get("sharp")
    # Strengths are rounded to 0.01: a slider's jitter does not rebuild the weights.
    assert tiny_store.get("sharp", 0.5) is tiny_store.get("sharp", 0.504)
    assert tiny_store.get("sharp", 0.5) is not tiny_store.get("sharp", 0.52)


def test_least_recently_used_model_is_evicted(tiny_store):
    tiny_store.max_loaded = 2
    first = tiny_store.get("plain")
    soft = tiny_store.get("soft")
    assert tiny_store.get("plain") is first  # refreshed: now "soft" is the oldest
    tiny_store.get("sharp")  # evicts "soft"
    assert tiny_store.get("plain") is first
    assert tiny_store.get("soft") is not soft


def test_concurrent_requests_build_one_model(tiny_store):
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(tiny_store.get("sharp", 0.7))
        except Exception as exc:  # collected so the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r is results[0] for r in results)


def test_errors_name_the_problem(tiny_store):
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        tiny_store.get("nope")
    with pytest.raises(ModelNotInstalledError, match=r"python install\.py --models absent"):
        tiny_store.get("absent")
    with pytest.raises(ValueError, match="no PSNR/GAN pair"):
        tiny_store.get("plain", strength=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        tiny_store.get("sharp", strength=1.2)
    assert issubclass(ModelNotFoundError, LookupError) and issubclass(ModelNotInstalledError, LookupError)


def test_strength_needs_both_halves_installed(tiny_store, tmp_path):
    (tmp_path / "soft.safetensors").unlink()
    assert not {i.name: i for i in tiny_store.list()}["sharp"].has_strength
    with pytest.raises(ModelNotInstalledError, match="soft"):
        tiny_store.get("sharp", strength=0.5)


def test_real_default_model_loads(model_store):
    model = model_store.get(model_store.default_model)
    d = model.descriptor
    assert (d.architecture, d.scale, d.hyperparameters["num_block"]) == ("RRDBNet", 4, 23)
    assert d.tile_pad > 0


def test_tampered_weights_are_refused(model_store, tmp_path):
    name = "realesr-animevideov3"
    path = tmp_path / model_store.path_of(name).name
    shutil.copyfile(model_store.path_of(name), path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit in the last weight: still a valid file, different numbers
    path.write_bytes(bytes(data))
    store = ModelStore(model_store.manifest, weights_dir=tmp_path)
    with pytest.raises(WeightsError, match="sha256") as info:
        store.get(name)
    assert f"python install.py --models {name}" in str(info.value)


def test_dropped_in_community_files_are_offered(tiny_store, tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    from image_enhancer.models.registry import UnsupportedModelError

    folder = tmp_path / "models"
    folder.mkdir()
    # A ×2 Real-ESRGAN: ×4 trunk on a pixel-unshuffled input.
    net = ESRGAN(in_nc=12, out_nc=3, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2)
    torch.save({"params_ema": net.state_dict()}, folder / "2x-community.pth")
    torch.save({"weight": torch.zeros(3)}, folder / "not-a-model.pth")
    save_file({"x": torch.zeros(2)}, folder / "plain.safetensors")  # the manifest's "plain" wins
    infos = {i.name: i for i in tiny_store.list()}
    community = infos["2x-community"]
    assert (community.architecture, community.scale, community.installed) == ("RRDBNet", 2, True)
    assert "not-a-model" not in infos
    assert infos["plain"].description == "tiny plain"
    model = tiny_store.get("2x-community")
    assert model.descriptor.hyperparameters["num_block"] == 1
    assert tiny_store.get("2x-community") is model
    with pytest.raises(UnsupportedModelError, match="no supported architecture"):
        tiny_store.get("not-a-model")
    with pytest.raises(ValueError, match="no strength"):
        tiny_store.get("2x-community", strength=0.5)
