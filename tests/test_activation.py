"""`image-enhancer activate`: nothing heavy runs until a client connects; then the real backend starts and
every connection is relayed to it. Both ways it is started: with a socket systemd passes, and plainly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from image_enhancer.client.lite import LiteClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="Unix sockets and systemd are POSIX")
FAST_MODEL = "realesr-animevideov3"


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the backend the activator started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _enhance_through(address: str) -> tuple[int, int]:
    with LiteClient(address) as client:
        client.wait_until_serving(timeout=180)
        image = np.random.default_rng(5).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        info, _ = client.enhance(image.tobytes(), 16, 12, 3, "u8", model=FAST_MODEL, scale=2.0, timeout=120)
    return info.width, info.height


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_socket_from_systemd_starts_the_backend_on_the_first_connection(model_store: object) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def as_systemd_does() -> None:  # in the child: the listening socket as fd 3, LISTEN_PID and LISTEN_FDS
        os.dup2(listener.fileno(), 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"

    command = [sys.executable, "-m", "image_enhancer", "activate", "--", "--no-warm-up"]
    activator = subprocess.Popen(command, preexec_fn=as_systemd_does, pass_fds=[3])
    listener.close()
    try:
        time.sleep(1.0)
        assert activator.poll() is None
        assert _children(activator.pid) == []  # nothing started before anyone connects
        assert _enhance_through(address) == (32, 24)
        backends = _children(activator.pid)
        assert len(backends) == 1
        assert _enhance_through(address) == (32, 24)  # the same backend serves later connections
        assert _children(activator.pid) == backends
    finally:
        _stop(activator)
    assert activator.returncode == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in backends)  # the backend stopped with it


def test_plain_start_listens_on_loopback_only_and_says_when_it_cannot() -> None:
    command = [sys.executable, "-m", "image_enhancer", "activate", "--address", "0.0.0.0:50997"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "loopback only" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command[-1] = f"127.0.0.1:{port}"
        busy = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr


def test_autostart_units_start_activate_on_the_plugins_address(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gimp_plugin"))
    import autostart

    assert autostart.write_units(Path("/opt/ie/bin/python"), "127.0.0.1:50051", tmp_path) == tmp_path
    socket_unit = (tmp_path / autostart.SOCKET_UNIT).read_text()
    service_unit = (tmp_path / autostart.SERVICE_UNIT).read_text()
    assert "ListenStream=127.0.0.1:50051\n" in socket_unit and "WantedBy=sockets.target" in socket_unit
    assert "ExecStart=/opt/ie/bin/python -m image_enhancer activate --idle-stop 30\n" in service_unit


def test_an_idle_backend_stops_and_starts_again_on_the_next_connection(model_store: object) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [
        sys.executable,
        "-m",
        "image_enhancer",
        "activate",
        "--address",
        address,
        "--idle-stop",
        "0.05",
    ]
    activator = subprocess.Popen([*command, "--", "--no-warm-up"], stdout=subprocess.DEVNULL)
    try:
        assert _enhance_through(address) == (32, 24)
        first = _children(activator.pid)
        assert len(first) == 1
        deadline = time.monotonic() + 30  # idle for 3 s, checked every 0.75 s
        while _children(activator.pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _children(activator.pid) == []
        assert _enhance_through(address) == (32, 24)
        assert len(_children(activator.pid)) == 1 and _children(activator.pid) != first
    finally:
        _stop(activator)
