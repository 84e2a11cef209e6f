"""Installing the manifest's face models (`install.py --models gfpgan-1.4`, and the InstallModel call):
downloaded from a loopback HTTP server standing in for the release page, checked against the pinned
sha256, loaded as the architecture the manifest names, written as safetensors where the face pass finds
them. A random-weight GFPGAN stands in for the release file."""

from __future__ import annotations

import functools
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from face_models import identity_state_dict, random_gfpgan

from image_enhancer import wire
from image_enhancer.weights.integrity import sha256_file
from image_enhancer.weights.manifest import Manifest, Source, load_manifest
from image_enhancer.weights.provision import ProvisionError, provision_models

NAME = "gfpgan-1.4"  # the packaged entry, its source pointed at the loopback server


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    """A loopback HTTP server serving a random GFPGAN as the release's .pth, and a non-face ×1 model."""
    folder = tmp_path_factory.mktemp("release")
    torch.save({"params_ema": random_gfpgan()}, folder / "GFPGANv1.4.pth")
    torch.save({"params_ema": identity_state_dict()}, folder / "NotAFace.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _manifest(url: str, sha256: str, size: int = 0) -> Manifest:
    """The packaged manifest, with the face model's one source at `url` pinned to `sha256` (and `size`)."""
    packaged = load_manifest()
    entry = packaged.face_model(NAME)
    assert entry is not None
    weights = replace(entry.weights, sources=(Source(kind="url", url=url, sha256=sha256, size=size),))
    faces = tuple(replace(e, files=(weights,)) if e.name == NAME else e for e in packaged.face_models)
    return replace(packaged, face_models=faces)


def _install(manifest: Manifest, cache: Path, online: bool = True) -> None:
    provision_models([NAME], None, cache / "downloads", online, log=lambda _: None, manifest=manifest,
                     cache=cache)


def test_every_face_model_of_the_manifest_is_pinned():
    faces = load_manifest().face_models
    assert {"gfpgan-1.3", "gfpgan-1.4", "restoreformer"} <= {e.name for e in faces}
    for entry in faces:
        urls = [s for s in entry.weights.sources if s.kind == "url"]
        assert urls and all(len(s.sha256) == 64 for s in urls), entry.name


def test_a_face_model_is_downloaded_verified_and_used(release, tmp_path):
    from image_enhancer.faces.catalogue import FaceModels

    folder, base = release
    cache = tmp_path / "weights"
    _install(_manifest(f"{base}/GFPGANv1.4.pth", sha256_file(folder / "GFPGANv1.4.pth")), cache)
    installed = cache / f"{NAME}.safetensors"
    assert installed.is_file()
    models = FaceModels(tmp_path / "no-models", cache)
    assert models.names() == [NAME]
    name, restorer = models.get("")  # the default face model is the installed one
    assert (name, restorer.architecture) == (NAME, "GFPGAN")
    written = installed.stat().st_mtime_ns
    _install(_manifest(f"{base}/GFPGANv1.4.pth", "0" * 64), cache, online=False)  # installed: nothing to do
    assert installed.stat().st_mtime_ns == written


def test_a_wrong_hash_or_a_file_that_is_no_face_model_is_refused(release, tmp_path):
    folder, base = release
    with pytest.raises(ProvisionError, match="sha256 does not match"):
        _install(_manifest(f"{base}/GFPGANv1.4.pth", "0" * 64), tmp_path / "a")
    with pytest.raises(ProvisionError, match="manifest says GFPGAN"):
        _install(_manifest(f"{base}/NotAFace.pth", sha256_file(folder / "NotAFace.pth")), tmp_path / "b")
    assert not [*tmp_path.glob("*/*.safetensors")]  # nothing written


def test_face_models_are_known_to_the_installer_offline(tmp_path):
    """`install.py --models gfpgan-1.4` goes to the download (skipped offline), not to "unknown model"."""
    with pytest.raises(ProvisionError) as refused:
        _install(load_manifest(), tmp_path, online=False)
    assert "skipped (offline)" in str(refused.value) and "unknown" not in str(refused.value)


def test_every_face_model_of_the_manifest_says_what_installing_it_downloads():
    """The catalogue shows each face model's download size: every release file's size is pinned."""
    for entry in load_manifest().face_models:
        assert all(s.size > 0 for s in entry.weights.sources if s.kind == "url"), entry.name


def test_install_model_call_installs_a_face_model_and_lists_it(release, model_store, tmp_path):
    from image_enhancer.client.grpc_client import EnhancerClient
    from image_enhancer.client.lite import LiteClient
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    folder, base = release
    release_file = folder / "GFPGANv1.4.pth"
    manifest = _manifest(f"{base}/GFPGANv1.4.pth", sha256_file(release_file), release_file.stat().st_size)
    cache = tmp_path / "weights"
    store = ModelStore(manifest, weights_dir=cache, models_dir=tmp_path / "models")
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    try:
        with LiteClient(running.address) as client:  # the GIMP plug-in's client and its catalogue
            assert client.describe().protocol_version >= wire.FACES_PROTOCOL_VERSION
            assert client.list_face_models() == []
            offered = {m.name: m for m in client.catalogue().face_models}
            assert set(offered) == {e.name for e in manifest.face_models}  # every one, none installed
            face = offered[NAME]
            assert (face.installed, face.installable, face.is_default) == (False, True, False)
            assert face.download_bytes == release_file.stat().st_size
            assert (face.architecture, face.scale, face.license) == ("GFPGAN", 1, "Apache-2.0")
            assert face.description == manifest.face_model(NAME).description
            assert not client.catalogue().installed_face_models
        with EnhancerClient(running.address) as client:
            last = client.install_model(NAME)
            assert last.stage == "installed"
            assert client.list_face_models() == [NAME]
            listed = client.catalogue()
        first = listed.face_models[0]  # installed, so listed first, and the default face model
        assert (first.name, first.installed, first.is_default, first.download_bytes) == (NAME, True, True, 0)
        assert listed.installed_face_models == [NAME]
        assert all(not m.installed and not m.is_default for m in listed.face_models[1:])
        assert NAME not in {m.name for m in listed.models}  # never offered as an enhancement model
    finally:
        running.stop()
