"""Ordinary client and shutdown events are one INFO line each, never a traceback: a client that cancels
while it is not reading its result, `serve` stopped by SIGTERM with calls open or during its warm-up,
and `activate` stopped by SIGTERM while it relays a connection."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FAST_MODEL
from server_process import MIB, ServerProcess, job_requests

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.paths import HOME_ENV, user_home
from image_enhancer.request import EnhanceOptions
from image_enhancer.v1 import enhancer_pb2_grpc

CANCELLED = "the client cancelled or went away"


def big_result_requests():
    """A job the fast model finishes at once whose 16 MiB result no client takes in without reading."""
    pixels = np.random.default_rng(0).random((128, 128, 4), dtype=np.float32)
    return job_requests(pixels, EnhanceOptions(model=FAST_MODEL, scale=8))


def channel_to(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 8 * MIB)])


def test_a_client_that_cancels_while_not_reading_its_result_is_one_info_line(grpc_server, caplog):
    caplog.set_level(logging.INFO)
    requests = big_result_requests()
    with channel_to(grpc_server.address) as channel:
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        for _ in range(3):
            call = stub.Enhance(iter(requests), timeout=120)
            for reply in call:  # read until the result is about to go out, then stop reading
                if reply.progress.stage == "finishing" and reply.progress.done == 1:
                    break
            time.sleep(1.0)  # the server's writes now wait for a reader that is not reading
            call.cancel()
            time.sleep(0.5)
    with EnhancerClient(grpc_server.address) as client:
        assert client.health() == "SERVING"
    records = [r for r in caplog.records if r.name.startswith(("grpc", "image_enhancer.server"))]
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info], [
        r.getMessage() for r in records
    ]
    assert len([r for r in records if r.levelno == logging.INFO and r.getMessage().endswith(CANCELLED)]) == 3
    assert grpc_server.jobs.result_bytes == 0


def test_a_client_whose_deadline_passes_while_not_reading_is_one_info_line(grpc_server, caplog):
    caplog.set_level(logging.INFO)
    with channel_to(grpc_server.address) as channel:
        call = enhancer_pb2_grpc.EnhancerStub(channel).Enhance(iter(big_result_requests()), timeout=3.0)
        time.sleep(4.0)  # not reading while the result is made, sent as far as it goes, and the time is up
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    records = [r for r in caplog.records if r.name.startswith(("grpc", "image_enhancer.server"))]
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info], [
        r.getMessage() for r in records
    ]
    messages = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(messages) == 1 and messages[0].endswith("the client's deadline passed"), messages


def test_serve_stopped_with_calls_open_logs_each_as_one_line(model_store, tmp_path: Path):
    server = ServerProcess(tmp_path / "server.log")
    channel = None
    try:
        server.wait_until_serving()
        channel = channel_to(server.address)
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        call = stub.Enhance(iter(big_result_requests()), timeout=120)
        assert next(call).progress.stage  # under way; then it is not read any more
        time.sleep(3.0)  # the result is made and its writes wait
        assert server.stop() == 0
    finally:
        server.stop()
        if channel is not None:
            channel.close()
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if " INFO " in line]
    assert lines[-3:-1] == [
        "SIGTERM received",
        "stopping: new calls are refused, calls in progress get 2 s to finish",
    ], log
    assert re.fullmatch(r"Enhance from \S+: ended because the server is stopping", lines[-1]), log


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_serve_stopped_during_its_warm_up_leaves_promptly_and_cleanly(tmp_path: Path):
    """Stopped while its worker warms up on a fresh cache (converting the network and timing the
    runtimes: seconds of native code that cannot be cancelled), the server leaves within its grace
    period with status 0, without tearing the runtimes down under that worker (ncnn's allocator
    reported "pool allocator destroyed too early" and the process could crash)."""
    home = tmp_path / "home"  # the installed weights, every cache empty
    home.mkdir()
    (home / "weights").symlink_to(user_home() / "weights", target_is_directory=True)
    env = {**os.environ, HOME_ENV: str(home)}
    command = [sys.executable, "-m", "image_enhancer", "serve", "-v", "--address", _free_address()]
    with open(tmp_path / "server.log", "ab") as log:  # appended: the converter's children write to it too
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert server.stdout is not None
        assert "serving on" in server.stdout.readline().decode()  # the warm-up goes on in its worker
        time.sleep(1.0)
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert time.monotonic() - stopped < 20  # 2 s for calls, 5 more for the worker
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    text = (tmp_path / "server.log").read_text(errors="replace")
    assert "FATAL" not in text and "Traceback" not in text and " ERROR " not in text, text
    assert "SIGTERM received" in text, text
    # Converting x4plus alone takes half a minute: the worker was still busy, and the server said so
    # (OpenVINO's converter sets the root logger to ERROR meanwhile; ours keeps its own level).
    assert "leaving without waiting for it" in text, text


def _free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.skipif(os.name != "posix", reason="signals and Unix sockets")
def test_activate_stopped_with_a_relayed_connection_open_logs_one_line(model_store):
    address = _free_address()
    command = [sys.executable, "-m", "image_enhancer", "activate", "-v", "--address", address]
    activator = subprocess.Popen(
        [*command, "--", "--no-warm-up"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with EnhancerClient(address) as client:  # its connection stays open, relayed to the backend
            client.wait_until_serving(180)
            assert client.list_models()
            activator.send_signal(signal.SIGTERM)
            _, log = activator.communicate(timeout=90)
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()
    assert activator.returncode == 0
    assert "Traceback" not in log and "ERROR" not in log, log
    info = [line.split(": ", 1)[1] for line in log.splitlines() if " INFO " in line]
    assert info[0].startswith("starting the backend: ")
    assert info[1:] == ["SIGTERM received: stopping; 1 relayed connection(s) closed"], log
