"""Slow and dead readers cannot grow the server's memory: results their clients have not read are held
against a budget (`serve --max-result-memory`; past it, jobs wait in the queue), and a client that takes
no data of its reply for `--reader-idle-timeout` is dropped with DEADLINE_EXCEEDED and its result freed.

Measured on a real server process (resident memory from /proc), with clients that never read, each on a
connection of its own as separate programs would be."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FAST_MODEL
from server_process import MIB, ServerProcess, job_requests, wait_for

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.request import EnhanceOptions
from image_enhancer.server.app import serve
from image_enhancer.v1 import enhancer_pb2_grpc

# A job whose result is 16 MiB (128² RGBA float ×8 → 1024² × 16 bytes) but that takes the fast model
# only a moment: far more than a client that stops reading takes in before gRPC's flow control stops it.
SIDE, SCALE = 128, 8
RESULT_MIB = 16
BUDGET_MIB = 32
IDLE_S = 2
DEAD_READERS = 4
DROPPED = f"the client took no data for {IDLE_S} s: the call was dropped and its result freed"


def big_result_job() -> tuple[np.ndarray, EnhanceOptions]:
    pixels = np.random.default_rng(0).random((SIDE, SIDE, 4), dtype=np.float32)
    return pixels, EnhanceOptions(model=FAST_MODEL, scale=SCALE)


def own_connection(address: str) -> grpc.Channel:
    """A channel that shares no connection with the test's other channels."""
    return grpc.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 8 * MIB)]
    )


@pytest.fixture()
def server(model_store, tmp_path: Path):
    running = ServerProcess(
        tmp_path / "server.log",
        "--max-queue", "6",
        "--max-result-memory", str(BUDGET_MIB),
        "--reader-idle-timeout", str(IDLE_S),
    )
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.stop()


def test_clients_that_stop_reading_hold_at_most_the_budget_and_are_dropped(server: ServerProcess):
    pixels, options = big_result_job()
    with EnhancerClient(server.address) as client:  # loads the model; the reference result
        expected = client.enhance_array(pixels, model=FAST_MODEL, scale=SCALE, timeout=300)
    assert expected.nbytes == RESULT_MIB * MIB
    time.sleep(0.5)
    baseline = server.rss()
    server.reset_peak()

    channels = [own_connection(server.address) for _ in range(DEAD_READERS)]
    try:
        requests = job_requests(pixels, options)
        calls = [enhancer_pb2_grpc.EnhancerStub(c).Enhance(iter(requests), timeout=300) for c in channels]
        # Nobody reads: each result is made, starts going out, stalls, and is dropped IDLE_S later.
        assert wait_for(lambda: server.log().count(DROPPED) == DEAD_READERS, timeout=120), server.log()
        time.sleep(0.5)
        peak, after = server.peak_rss() - baseline, server.rss() - baseline
        # Held at once: the budget, plus the result that crossed it, plus the engine's working memory for
        # the next one. Without the budget and the drop, all four results (and a copy of each) stay.
        assert peak < (BUDGET_MIB + 3 * RESULT_MIB) * MIB, f"peak {peak / MIB:.0f} MiB over the baseline"
        # Freed: what stays is gRPC's share of each dropped call (at most one 1 MiB message) until the
        # client reads, cancels or disconnects.
        assert after < 2 * RESULT_MIB * MIB, f"{after / MIB:.0f} MiB still held after every drop"
        for call in calls:  # a client that reads again learns why its call ended
            with pytest.raises(grpc.RpcError) as caught:
                for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert caught.value.details() == DROPPED
    finally:
        for channel in channels:
            channel.close()

    # The server still serves, and its memory budget is free again.
    with EnhancerClient(server.address) as client:
        np.testing.assert_array_equal(
            client.enhance_array(pixels, model=FAST_MODEL, scale=SCALE, timeout=300), expected
        )
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log
    assert "job(s) wait: results their clients have not read hold 32 of 32 MiB" in log


def test_a_slow_but_steady_reader_gets_its_whole_result(make_enhancer):
    running = serve(make_enhancer(), "127.0.0.1:0", warm_up=[FAST_MODEL], reader_idle_s=3.0)
    try:
        assert running.wait_until_ready(120)
        pixels = np.random.default_rng(1).random((64, 64, 4), dtype=np.float32)
        with EnhancerClient(running.address) as client:
            expected = client.enhance_array(pixels, model=FAST_MODEL, scale=8)  # 512² RGBA float: 4 MiB
        requests = job_requests(pixels, EnhanceOptions(model=FAST_MODEL, scale=8))
        with own_connection(running.address) as channel:
            chunks = []
            for reply in enhancer_pb2_grpc.EnhancerStub(channel).Enhance(iter(requests), timeout=120):
                if reply.chunk:
                    # A pause at every part of the result (e.g. writing it to a slow disk), each well under
                    # the idle limit. Progress is read at once, as clients do: a reader that pauses at every
                    # message falls behind by all of them, which the server sees as idle (see Replies).
                    time.sleep(0.6)
                    chunks.append(reply.chunk)
        assert len(chunks) >= 4  # the result came in several messages, each waited for
        result = np.frombuffer(b"".join(chunks), np.float32).reshape(expected.shape)
        np.testing.assert_array_equal(result, expected)
        assert running.jobs.result_bytes == 0
    finally:
        running.stop()
