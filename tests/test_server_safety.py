"""Who can reach the server: Unix sockets are private, non-loopback listeners need a token or TLS,
and `image-enhancer serve` reports NOT_SERVING until its model is warm."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_MODEL, REPO_ROOT

from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.server.app import TlsFiles, serve
from image_enhancer.server.auth import UnsafeListenError, is_local_address


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def socket_dir():
    # Unix socket paths are limited to about 100 bytes, so not pytest's deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="ie-") as folder:
        yield Path(folder)


def test_unix_socket_is_private_and_serves(make_enhancer, socket_dir):
    path = socket_dir / "enhancer.sock"
    running = serve(make_enhancer(), f"unix:{path}", warm_up=[])
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with EnhancerClient(f"unix:{path}") as client:
            client.wait_until_serving(60)
            result = client.enhance_array(np.full((8, 8, 3), 128, np.uint8), model=FAST_MODEL)
        assert result.shape == (32, 32, 3)
        # A second server cannot take over a socket in use.
        with pytest.raises(OSError, match="already listening"):
            serve(make_enhancer(), f"unix:{path}", warm_up=[])
    finally:
        running.stop()
    assert not path.exists()


def test_stale_socket_file_is_replaced(make_enhancer, socket_dir):
    path = socket_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: what a crashed server leaves behind
    running = serve(make_enhancer(), f"unix:{path}", warm_up=[])
    try:
        with EnhancerClient(f"unix:{path}") as client:
            assert client.health() == "SERVING"
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:1", True),
        ("127.5.0.1:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("unix:/x", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("192.168.1.5:1", False),
        ("example.org:1", False),
    ],
)
def test_loopback_addresses_are_recognised(address, local):
    assert is_local_address(address) is local


@pytest.mark.parametrize("address", ["50051", "localhost", ":50051", "127.0.0.1:port"])
def test_malformed_addresses_are_refused(make_enhancer, address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        serve(make_enhancer(), address, warm_up=[])


def test_all_interfaces_without_token_or_tls_is_refused(make_enhancer):
    with pytest.raises(UnsafeListenError, match="--token"):
        serve(make_enhancer(), "0.0.0.0:0", warm_up=[])


def test_token_is_required_when_set(make_enhancer):
    running = serve(make_enhancer(), "0.0.0.0:0", token="s3cret", warm_up=[])
    address = f"127.0.0.1:{running.port}"
    try:
        with EnhancerClient(address) as anonymous:
            assert anonymous.health() == "SERVING"  # health stays open for supervisors
            for call in (
                anonymous.list_models,
                anonymous.describe,
                lambda: anonymous.enhance(b"\0" * 48, 4, 4, 3, "u8", model=FAST_MODEL),
            ):
                with pytest.raises(EnhancerError, match="requires an access token") as caught:
                    call()
                assert caught.value.kind == "unauthenticated"
        with EnhancerClient(address, token="wrong") as wrong, pytest.raises(EnhancerError, match="wrong"):
            wrong.list_models()
        with EnhancerClient(address, token="s3cret") as client:
            assert client.list_models()
            result = client.enhance_array(np.zeros((4, 4, 3), np.uint8), model=FAST_MODEL)
            assert result.shape == (16, 16, 3)
    finally:
        running.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "image_enhancer", "serve", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        text=True,
        **popen,
    )


def wait_for_port(port: int, child: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.poll() is None, "the server exited before listening"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    pytest.fail(f"nothing listened on port {port} within {timeout:.0f} s")


def test_cli_refuses_an_unprotected_public_address():
    child = run_cli("--address", "0.0.0.0:0", env={"IMAGE_ENHANCER_TOKEN": ""}, stderr=subprocess.PIPE)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 2 and "refusing to listen on 0.0.0.0:0" in stderr


@pytest.mark.slow
def test_cli_serves_after_warming_up_and_stops_on_sigterm(model_store):
    port = free_port()
    address = f"127.0.0.1:{port}"
    child = run_cli("--address", address, "--device", "cpu", stdout=subprocess.PIPE)
    try:
        # Connect only once the port is open: a gRPC channel that failed to connect backs off for a
        # second or more, long enough to miss the whole warm-up on a fast machine.
        wait_for_port(port, child)
        with EnhancerClient(address) as client:
            statuses = []
            deadline = time.monotonic() + 300
            while "SERVING" not in statuses and time.monotonic() < deadline:
                try:
                    statuses.append(client.health(timeout=2))
                except EnhancerError:
                    time.sleep(0.05)
            # The default model takes seconds to load and run once on CPU: health says so meanwhile.
            assert statuses[0] == "NOT_SERVING" and statuses[-1] == "SERVING"
            assert client.describe().default_model == model_store.default_model
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 0
        assert address in child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes()


def test_tls_allows_a_public_address_and_encrypts(make_enhancer, certificate):
    from image_enhancer.client.lite import LiteClient

    cert, key = certificate
    running = serve(make_enhancer(), "0.0.0.0:0", tls=TlsFiles(cert, key), warm_up=[])
    address = f"localhost:{running.port}"
    try:
        with EnhancerClient(address, root_certificates=cert) as client:
            assert FAST_MODEL in {m.name for m in client.list_models()}
            assert client.enhance_array(np.zeros((4, 4, 3), np.uint8), model=FAST_MODEL).shape == (16, 16, 3)
        with LiteClient(address, root_certificates=cert) as lite:
            assert lite.describe().default_model
        with EnhancerClient(address) as plaintext, pytest.raises(EnhancerError) as caught:
            plaintext.list_models(timeout=5)
        assert caught.value.kind in ("unavailable", "deadline")
    finally:
        running.stop()
