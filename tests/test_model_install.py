"""Installing a model through the backend (the InstallModel call) on a real server on loopback: the server
downloads from the manifest's pinned URL (here a test HTTP server on 127.0.0.1), checks the sha256,
converts and installs; progress comes as a stream; a wrong sha256, a model the manifest lacks and a
cancelled install leave nothing installed. ListModels offers the catalogue: what is not installed, its
download size, and which entries are members of a pair."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.client.lite import LiteClient
from image_enhancer.weights.manifest import entry_json, parse_manifest

FAST_MODEL = "realesr-animevideov3"  # its real weights are what the test server hands out
MIB = 1 << 20


@dataclass
class Files:
    """A local HTTP server: path → bytes; `held` paths send their first MiB, then wait for `release`."""

    url: str
    requests: list[str]
    release: threading.Event


@pytest.fixture
def files(model_store) -> Iterator[tuple[Files, bytes]]:  # noqa: ANN001
    data = model_store.path_of(FAST_MODEL).read_bytes()
    assert len(data) > MIB  # more than one block: the download reports progress on the way
    requests: list[str] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path.startswith("/held/"):
                self.wfile.write(data[:MIB])
                self.wfile.flush()
                release.wait(60)
            self.wfile.write(data[MIB:] if self.path.startswith("/held/") else data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Files(f"http://127.0.0.1:{server.server_address[1]}", requests, release), data
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def _entry(name: str, url: str, sha256: str, size: int, pair: dict[str, str] | None = None) -> dict:
    entry = {
        "name": name,
        "architecture": "SRVGGNetCompact",
        "scale": 4,
        "description": f"Test — {name}",
        "license": "BSD-3-Clause",
        "source": "the test",
        "files": [
            {
                "role": "weights",
                "filename": f"{name}.safetensors",
                "sha256": "",
                "sources": [{"kind": "url", "url": url, "sha256": sha256, "size": size}],
            }
        ],
    }
    if pair:
        entry["pair"] = pair
    return entry


@pytest.fixture
def server(model_store, files, tmp_path: Path):  # noqa: ANN001
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    local, data = files
    good, size = hashlib.sha256(data).hexdigest(), len(data)
    fast = entry_json(model_store.manifest.get(FAST_MODEL)) | {"default": True}
    manifest = parse_manifest(
        {
            "models": [
                fast,
                _entry("test-sharp", f"{local.url}/sharp.safetensors", good, size,
                       {"psnr": "test-faithful", "gan": "test-sharp"}),
                _entry("test-faithful", f"{local.url}/faithful.safetensors", good, size),
                _entry("test-wrong", f"{local.url}/wrong.safetensors", "0" * 64, size),
                _entry("test-held", f"{local.url}/held/x.safetensors", good, size),
            ]
        }
    )
    weights = tmp_path / "weights"
    store = ModelStore(manifest, weights_dir=weights, models_dir=tmp_path / "models")
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    assert running.wait_until_ready(60)
    yield running, weights, local
    running.stop()


def _listed(address: str) -> dict:
    with LiteClient(address) as client:
        return {m.name: m for m in client.list_models()}


def test_the_catalogue_lists_what_can_be_installed(server, files) -> None:  # noqa: ANN001
    running, _, _ = server
    _, data = files
    models = _listed(running.address)
    sharp, faithful = models["test-sharp"], models["test-faithful"]
    assert not sharp.installed and sharp.installable and sharp.download_bytes == len(data)
    assert sharp.description == "Test — test-sharp" and sharp.license == "BSD-3-Clause"
    assert faithful.pair_member_of == "test-sharp" and sharp.pair_member_of == ""


def test_install_downloads_verifies_and_reports_progress(server, files) -> None:  # noqa: ANN001
    running, weights, local = server
    _, data = files
    events = []
    with LiteClient(running.address) as client:  # the plug-in's client
        last = client.install_model("test-sharp", on_progress=events.append)
    assert last.stage == "installed"
    downloads = [e for e in events if e.stage == "downloading" and e.model == "test-sharp"]
    assert len(downloads) >= 2 and downloads[-1].done_bytes == downloads[-1].total_bytes == len(data)
    assert [e.done_bytes for e in downloads] == sorted(e.done_bytes for e in downloads)
    # The other member of the pair came too, so the Detail control works at once.
    assert any(e.model == "test-faithful" and e.stage == "downloading" for e in events)
    assert sorted(local.requests) == ["/faithful.safetensors", "/sharp.safetensors"]
    models = _listed(running.address)
    assert models["test-sharp"].installed and models["test-sharp"].has_strength
    assert models["test-sharp"].download_bytes == 0
    assert (weights / "test-sharp.safetensors").is_file()
    with EnhancerClient(running.address) as client:  # the installed model enhances
        out = client.enhance_array(np.zeros((8, 8, 3), np.uint8), model="test-sharp", strength=0.5)
    assert out.shape == (32, 32, 3)
    with LiteClient(running.address) as client:  # again: nothing to do
        assert client.install_model("test-sharp").stage == "installed"
    assert len(local.requests) == 2


def test_a_wrong_sha256_is_refused_and_nothing_is_installed(server) -> None:  # noqa: ANN001
    running, weights, local = server
    with LiteClient(running.address) as client, pytest.raises(EnhancerError) as refused:
        client.install_model("test-wrong")
    assert refused.value.kind == "invalid"
    assert "test-wrong" in refused.value.message and "sha256 does not match" in refused.value.message
    assert local.requests == ["/wrong.safetensors"]
    assert not weights.exists() or list(weights.iterdir()) == []
    assert not _listed(running.address)["test-wrong"].installed


def test_models_outside_the_manifest_are_refused(server) -> None:  # noqa: ANN001
    running, weights, local = server
    with EnhancerClient(running.address) as client, pytest.raises(EnhancerError) as refused:
        client.install_model("http://127.0.0.1/evil.pth")
    assert refused.value.kind == "not_found"
    assert "not a model the server can install" in refused.value.message
    assert "test-sharp" in refused.value.message  # it names what can be installed
    assert local.requests == [] and not weights.exists()


def test_a_cancelled_install_stops_and_leaves_nothing(server) -> None:  # noqa: ANN001
    running, weights, local = server

    class Stop(Exception):
        pass

    def stop_when_downloading(event) -> None:  # noqa: ANN001
        if event.stage == "downloading":
            raise Stop

    with LiteClient(running.address) as client, pytest.raises(Stop):
        client.install_model("test-held", on_progress=stop_when_downloading)
    # The client's cancellation reaches the server as a frame of its own, after the call has ended here:
    # released at once, the rest of a small file could arrive first (seen once on a busy CI machine), and a
    # completed download is installed. A user cancels long before the last block.
    time.sleep(1)
    local.release.set()  # the rest of the file arrives; the server must drop it, not install it
    time.sleep(2)
    assert not _listed(running.address)["test-held"].installed
    assert not weights.exists() or list(weights.iterdir()) == []
