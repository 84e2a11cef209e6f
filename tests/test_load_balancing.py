"""Several real backends behind one gRPC target: `ipv4:` lists and `dns:///` names, balanced round-robin by
grpcio's own policy (with retries on UNAVAILABLE), and taken in order by the pure-Python client."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_MODEL

from image_enhancer.address import AddressError, parse_address, parse_target
from image_enhancer.cli import main
from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.client.lite import LiteClient
from image_enhancer.engine.enhancer import Enhancer
from image_enhancer.imagefiles import ImageFile, read_image, write_image
from image_enhancer.server.app import serve

PIXELS = np.random.default_rng(26).integers(0, 256, (12, 16, 3), dtype=np.uint8)


class CountingEnhancer(Enhancer):
    """The real engine, counting the jobs it ran: which backend did the work."""

    jobs = 0

    def enhance(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.jobs += 1
        return super().enhance(*args, **kwargs)


@pytest.fixture()
def backends(model_store):
    """Three real backends on loopback ports; the test may stop any of them."""
    started = []
    for _ in range(3):
        enhancer = CountingEnhancer(model_store, device="cpu")
        running = serve(enhancer, "127.0.0.1:0", warm_up=[FAST_MODEL])
        started.append((running, enhancer))
    for running, enhancer in started:
        assert running.wait_until_ready(120)
        enhancer.jobs = 0  # the warm-up run is not a job
    yield started
    for running, _ in started:
        running.stop(grace=0.5)


def ipv4_target(backends) -> str:
    return "ipv4:" + ",".join(running.address for running, _ in backends)


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("text", "scheme", "endpoints"),
    [
        ("dns:///ie.default.svc.cluster.local:50051", "dns", [("ie.default.svc.cluster.local", 50051)]),
        ("dns:ie:7", "dns", [("ie", 7)]),
        ("dns://10.0.0.10/ie:7", "dns", [("ie", 7)]),
        ("ipv4:127.0.0.1:1,10.1.2.3:2", "ipv4", [("127.0.0.1", 1), ("10.1.2.3", 2)]),
        ("ipv6:[::1]:3,[fe80::1]:4", "ipv6", [("::1", 3), ("fe80::1", 4)]),
        ("127.0.0.1:50051", "", [("127.0.0.1", 50051)]),
        ("dns:50051", "", [("dns", 50051)]),  # a host that happens to be called "dns"
    ],
)
def test_targets_are_parsed(text, scheme, endpoints):
    target = parse_target(text)
    assert target.scheme == scheme and target.balanced == bool(scheme)
    assert [(e.host, e.port) for e in target.endpoints] == endpoints


@pytest.mark.parametrize(
    "text",
    ["dns:///ie", "dns://ie", "ipv4:", "ipv4:ie:1", "ipv4:[::1]:1", "ipv6:127.0.0.1:1", "ipv4:1.2.3.4:1,"],
)
def test_malformed_targets_are_refused(text):
    with pytest.raises(AddressError, match="dns:///NAME:PORT|not an IPv"):
        parse_target(text)
    with pytest.raises(EnhancerError) as refused:
        EnhancerClient(text)
    assert refused.value.kind == "invalid"


def test_a_server_still_listens_on_one_address_only():
    with pytest.raises(AddressError):
        parse_address("ipv4:127.0.0.1:1,127.0.0.1:2")


def test_grpcio_spreads_jobs_round_robin_and_survives_a_stopped_backend(backends):
    with EnhancerClient(ipv4_target(backends)) as client:
        client.wait_until_serving(30)
        for _ in range(9):
            result = client.enhance_array(PIXELS, model=FAST_MODEL, scale=2)
            assert result.shape == (24, 32, 3)
        counts = [enhancer.jobs for _, enhancer in backends]
        assert sum(counts) == 9 and all(counts), counts

        backends[0][0].stop(grace=0.5)
        before = [enhancer.jobs for _, enhancer in backends]
        for _ in range(6):  # every call succeeds: refused ones are retried, the dead backend is dropped
            assert client.enhance_array(PIXELS, model=FAST_MODEL, scale=2).shape == (24, 32, 3)
        after = [enhancer.jobs for _, enhancer in backends]
        assert after[0] == before[0]
        assert after[1] > before[1] and after[2] > before[2], after


def test_the_cli_balances_a_folder_across_backends(backends, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(tmp_path / "empty-home"))  # no local work possible
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(6):
        write_image(folder / f"p{index}.png", ImageFile(np.roll(PIXELS, index, axis=1)))
    out = tmp_path / "out"
    assert main(["enhance", str(folder), "-o", str(out), "--server", ipv4_target(backends),
                 "-m", FAST_MODEL, "--scale", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"p{index}.png" for index in range(6)]
    assert read_image(out / "p0.png").pixels.shape == (24, 32, 3)
    assert sum(1 for _, enhancer in backends if enhancer.jobs) >= 2


def test_dns_target_reaches_a_backend(backends):
    running, enhancer = backends[0]
    try:
        socket.getaddrinfo("localhost", running.port)
    except OSError:
        pytest.skip("localhost does not resolve here")
    target = f"dns:///localhost:{running.port}"
    with EnhancerClient(target) as client:
        client.wait_until_serving(30)
        assert client.enhance_array(PIXELS, model=FAST_MODEL, scale=2).shape == (24, 32, 3)
    with LiteClient(target) as lite:
        assert lite.health() == "SERVING"
        lite.enhance(PIXELS.tobytes(), 16, 12, 3, "u8", model=FAST_MODEL, scale=2)
    assert enhancer.jobs == 2


def test_the_pure_python_client_takes_the_first_backend_that_answers(backends):
    # pick_first, gRPC's default: a dead address first in the list is passed over, calls are not spread.
    target = f"ipv4:127.0.0.1:{dead_port()}," + ",".join(running.address for running, _ in backends[1:])
    with LiteClient(target) as client:
        assert client.health() == "SERVING"
        for _ in range(3):
            info, _data = client.enhance(PIXELS.tobytes(), 16, 12, 3, "u8", model=FAST_MODEL, scale=2)
            assert (info.width, info.height) == (32, 24)
        assert [enhancer.jobs for _, enhancer in backends] == [0, 3, 0]
        backends[1][0].stop(grace=0.5)  # the one in use goes away: the next call moves on
        client.enhance(PIXELS.tobytes(), 16, 12, 3, "u8", model=FAST_MODEL, scale=2)
        assert [enhancer.jobs for _, enhancer in backends] == [0, 3, 1]


def test_the_pure_python_client_reports_when_no_backend_answers():
    target = f"ipv4:127.0.0.1:{dead_port()},127.0.0.1:{dead_port()}"
    with LiteClient(target) as client, pytest.raises(EnhancerError) as failed:
        client.health(timeout=2)
    assert failed.value.kind == "unavailable"
