"""Soak: 200 jobs from 20 clients on a real server process, a quarter of which cancel or stop reading at
random points. The server's resident memory stays within its stated budget, it holds no more file
descriptors or threads once the clients are gone than before, every completed job's result is exactly
the reference result for its input, and its log holds one INFO line per ordinary event and no traceback."""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FAST_MODEL
from server_process import MIB, ServerProcess, job_requests, wait_for

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.request import EnhanceOptions
from image_enhancer.v1 import enhancer_pb2_grpc

CLIENTS, JOBS_PER_CLIENT = 20, 10
BUDGET_MIB, IDLE_S = 32, 2
BIG_RESULT_MIB = 16  # 128² RGBA float ×8: more than a client takes in without reading
DROPPED = f"the client took no data for {IDLE_S} s: the call was dropped and its result freed"
# What the server may log during the soak (loggers image_enhancer.server.*): ordinary events only.
ORDINARY = [
    r"listening on \S+",
    r"Enhance from \S+: the client cancelled or went away",
    r"Enhance from \S+: the client's deadline passed",
    rf"Enhance from \S+: DEADLINE_EXCEEDED: {DROPPED}",
    r"\d+ job\(s\) wait: results their clients have not read hold \d+ of \d+ MiB",
    r"SIGTERM received",
    r"stopping: new calls are refused, calls in progress get 2 s to finish",
]

pytestmark = pytest.mark.slow


def inputs() -> list[tuple[np.ndarray, EnhanceOptions]]:
    """Small jobs in every layout (32–64 pixels a side, ×1 and ×2), and one with a 16 MiB result."""
    rng = np.random.default_rng(7)
    jobs = []
    for index, (height, width, channels, sample_type, scale) in enumerate([
        (32, 32, 3, np.uint8, 2),
        (48, 40, 4, np.uint8, 2),
        (64, 64, 3, np.uint16, 1),
        (40, 56, 1, np.uint8, 2),
        (64, 48, 2, np.float32, 2),
        (36, 60, 4, np.uint16, 1),
    ]):
        pixels = rng.random((height, width, channels), dtype=np.float32)
        if sample_type is not np.float32:
            pixels = (pixels * np.iinfo(sample_type).max).round().astype(sample_type)
        alpha_mode = ("model", "bicubic")[index % 2]
        jobs.append((pixels, EnhanceOptions(model=FAST_MODEL, scale=scale, alpha_mode=alpha_mode)))
    jobs.append((rng.random((128, 128, 4), dtype=np.float32), EnhanceOptions(model=FAST_MODEL, scale=8)))
    return jobs


BIG = 6  # the index of the job with the large result


def as_array(data: bytes, reference: np.ndarray) -> np.ndarray:
    return np.frombuffer(data, reference.dtype.newbyteorder("<")).reshape(reference.shape)


class Client(threading.Thread):
    """One client program: its own connection, ten jobs in a row, some of them abandoned on the way."""

    def __init__(self, index: int, address: str, plan: list[tuple[int, str]], references: list[np.ndarray]):
        super().__init__(name=f"client-{index}")
        self.rng = random.Random(index)
        self.address = address
        self.plan = plan
        self.references = references
        self.completed = 0
        self.dropped = 0
        self.errors: list[str] = []

    def run(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 8 * MIB)]
        with grpc.insecure_channel(self.address, options=options) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            for job, behaviour in self.plan:
                try:
                    self.one(stub, job, behaviour)
                except Exception as error:  # reported by the test
                    self.errors.append(f"job {job} ({behaviour}): {error!r}")

    def one(self, stub, job: int, behaviour: str) -> None:
        pixels, options = JOBS[job]
        call = stub.Enhance(iter(job_requests(pixels, options)), timeout=300)
        if behaviour == "cancel at once":  # during the upload
            call.cancel()
            return
        if behaviour.startswith("cancel after"):  # some messages in: progress, or part of the result
            for count, _ in enumerate(call, 1):
                if count >= int(behaviour.split()[2]):
                    break
            call.cancel()
            return
        received = []
        # A stopper stops once its result has started to come: after the header and a few chunks.
        stop_after = self.rng.randint(0, 3) if behaviour == "stop reading" else -1
        try:
            for reply in call:
                if reply.chunk:
                    received.append(reply.chunk)
                if (reply.HasField("result") or reply.chunk) and len(received) == stop_after:
                    time.sleep(2 * IDLE_S + 1.0)  # the server drops the call meanwhile
        except grpc.RpcError as error:
            if behaviour == "stop reading" and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                assert error.details() == DROPPED, error.details()
                self.dropped += 1
                return
            raise
        reference = self.references[job]
        np.testing.assert_array_equal(as_array(b"".join(received), reference), reference)
        self.completed += 1


JOBS = inputs()


def plans(seed: int = 21) -> list[list[tuple[int, str]]]:
    """Which job each client sends in turn and how it behaves: a quarter cancel or stop reading."""
    rng = random.Random(seed)
    total = CLIENTS * JOBS_PER_CLIENT
    bad = set(rng.sample(range(total), total // 4))
    stoppers = set(rng.sample(sorted(bad), 12))
    result: list[list[tuple[int, str]]] = [[] for _ in range(CLIENTS)]
    for number in range(total):
        if number in stoppers:
            job, behaviour = BIG, "stop reading"
        elif number in bad:
            job = rng.randrange(len(JOBS))
            behaviour = rng.choice(["cancel at once", f"cancel after {rng.randint(1, 8)}"])
        else:
            job, behaviour = rng.randrange(BIG), "read"
        result[number % CLIENTS].append((job, behaviour))
    return result


def test_200_jobs_from_20_clients_a_quarter_of_them_abandoned(model_store, tmp_path: Path):
    server = ServerProcess(
        tmp_path / "server.log",
        "--max-queue", str(CLIENTS),  # every client may have a job waiting: none is refused
        "--max-result-memory", str(BUDGET_MIB),
        "--reader-idle-timeout", str(IDLE_S),
    )
    try:
        server.wait_until_serving()
        # A reference run of each input, one at a time; then a short round of the same mix from every
        # client at once: the thread pools that grow with load up to a fixed size (gRPC's, asyncio's)
        # have grown when the baseline is taken.
        with EnhancerClient(server.address) as client:
            references = [client.enhance_array(pixels, options, timeout=300) for pixels, options in JOBS]
        assert references[BIG].nbytes == BIG_RESULT_MIB * MIB
        warm_up = [Client(i, server.address, plan[:1], references) for i, plan in enumerate(plans(seed=3))]
        _run(warm_up)
        assert not [e for c in warm_up for e in c.errors]
        time.sleep(1.0)
        baseline_rss, baseline_fds, baseline_threads = server.rss(), server.fds(), server.threads()
        server.reset_peak()

        started = time.monotonic()
        clients = [Client(i, server.address, plan, references) for i, plan in enumerate(plans())]
        _run(clients)
        took = time.monotonic() - started
        errors = [e for c in clients for e in c.errors]
        assert not errors, errors
        peak = server.peak_rss() - baseline_rss
        completed = sum(c.completed for c in clients)
        dropped = sum(c.dropped for c in clients)
        print(f"soak: {took:.1f} s, {completed} completed, {dropped} dropped, peak +{peak / MIB:.0f} MiB")
        assert (completed, dropped) == (150, 12)  # every job read to the end; every stopper dropped
        # The stated budget: unread results may hold BUDGET_MIB, plus the result that crossed it, plus
        # the engine's working memory for the job running meanwhile.
        assert peak < (BUDGET_MIB + 3 * BIG_RESULT_MIB) * MIB, f"peak {peak / MIB:.0f} MiB over the baseline"
        # Once every client has gone, the server holds no more than before.
        fds, threads = baseline_fds, baseline_threads
        assert wait_for(lambda: server.fds() <= fds, 20), f"{server.fds()} open files, {fds} before"
        assert wait_for(lambda: server.threads() <= threads, 20), f"{server.threads()} threads, {threads}"
        assert server.rss() - baseline_rss < 2 * BIG_RESULT_MIB * MIB
    finally:
        exit_status = server.stop()
    assert exit_status == 0
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log
    for line in log.splitlines():
        if " INFO image_enhancer.server." in line:
            message = line.split(": ", 1)[1]
            assert any(re.fullmatch(pattern, message) for pattern in ORDINARY), line
    assert log.count(DROPPED) == dropped + sum(c.dropped for c in warm_up)  # each drop one line


def _run(clients: list[Client]) -> None:
    for client in clients:
        client.start()
    for client in clients:
        client.join(600)
        assert not client.is_alive(), f"{client.name} did not finish"

