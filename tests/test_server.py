"""The gRPC server end to end: a real server on a loopback port, the real engine and weights.

Results must equal the in-process engine's; cancelled, disconnected and timed-out jobs must free the
worker at once; malformed and truncated streams get clear statuses and never disturb other clients.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import FAST_MODEL
from PIL import Image

from image_enhancer import wire
from image_enhancer.client import core
from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.server.app import serve
from image_enhancer.server.jobs import JobQueue
from image_enhancer.server.service import UploadLimits
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.wire import ImageInfo

DATA = Path(__file__).resolve().parent / "data"
# A job that would run for minutes: thousands of minimum-size tiles, one per batch on CPU.
LONG_JOB_SIDE = 384
LONG_JOB_OPTIONS = EnhanceOptions(model=FAST_MODEL, tile=16)
# Time allowed for a queued job to finish once the worker is free: a 16x16 job takes well under a
# second, but the CI machine's two cores are shared; a job left running would take minutes.
PROMPT_S = 20.0


@pytest.fixture(scope="module")
def reference(make_enhancer) -> Enhancer:
    """The in-process engine that server results are compared with."""
    return make_enhancer()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(DATA / "forest_256.png").convert("RGB"))


def as_layout(rgb: np.ndarray, channels: int, sample_type: str) -> np.ndarray:
    """A crop of the photo in the given channel count and sample type (alpha as a gradient)."""
    height, width = rgb.shape[:2]
    alpha = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)[:, :, None]
    gray = rgb.astype(np.float32).mean(axis=2, keepdims=True)
    planes = {
        1: gray,
        2: np.concatenate([gray, alpha], 2),
        3: rgb.astype(np.float32),
        4: np.concatenate([rgb.astype(np.float32), alpha], 2),
    }[channels]
    if sample_type == "u8":
        return planes.round().astype(np.uint8)
    if sample_type == "u16":
        return (planes * 257).round().astype(np.uint16)
    return (planes / 255).astype(np.float32)


def long_job_requests() -> list[pb.EnhanceRequest]:
    pixels = np.random.default_rng(1).integers(0, 256, (LONG_JOB_SIDE, LONG_JOB_SIDE, 3), dtype=np.uint8)
    image = ImageInfo(LONG_JOB_SIDE, LONG_JOB_SIDE, 3, "u8")
    return list(core.enhance_requests(pixels.tobytes(), image, LONG_JOB_OPTIONS))


def start_long_job(stub: enhancer_pb2_grpc.EnhancerStub, **call_args):
    """Start a long job and return its call once the worker is enhancing it."""
    call = stub.Enhance(iter(long_job_requests()), **call_args)
    for response in call:
        if response.progress.stage == "enhancing":
            return call
    raise AssertionError("the long job ended before it started enhancing")


def small_job_seconds(client: EnhancerClient) -> float:
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    started = time.monotonic()
    info, data = client.enhance(pixels.tobytes(), 16, 16, 3, "u8", model=FAST_MODEL, timeout=120)
    assert (info.width, info.height, len(data)) == (64, 64, 64 * 64 * 3)
    return time.monotonic() - started


def assert_slots_given_back(jobs: JobQueue) -> None:
    """The server frees a slot just after the client sees the call end; allow it a moment."""
    deadline = time.monotonic() + 10
    while jobs.slots_taken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.slots_taken == 0


def status_of(
    requests: list[pb.EnhanceRequest], stub: enhancer_pb2_grpc.EnhancerStub
) -> tuple[grpc.StatusCode, str]:
    try:
        for _ in stub.Enhance(iter(requests), timeout=60):
            pass
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


@pytest.fixture
def stub(grpc_server):
    with grpc.insecure_channel(
        grpc_server.address, options=[("grpc.max_send_message_length", 64 * wire.MIB)]
    ) as channel:
        yield enhancer_pb2_grpc.EnhancerStub(channel)


# --- metadata ---------------------------------------------------------------------------------------------


def test_health_reflection_and_description(grpc_server, grpc_client, grpc_enhancer, model_store):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert grpc_client.health() == "SERVING"
    with grpc.insecure_channel(grpc_server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"image_enhancer.v1.Enhancer", "grpc.health.v1.Health"} <= services

    info = grpc_client.describe()
    assert info.version and info.device == "cpu" and info.device_name == grpc_enhancer.compute.describe()
    assert info.device_name.endswith(("(CPU, OpenVINO)", "(CPU, ncnn)", "(CPU, PyTorch)"))
    assert info.device_memory_bytes > 1 << 30
    assert info.default_model == model_store.default_model
    assert info.protocol_version == 3 == wire.PROTOCOL_VERSION  # faces, InstallModel, EstimateTime
    assert info.max_queue == grpc_server.jobs.max_waiting and info.max_pixels == grpc_enhancer.max_pixels


def test_list_models_reports_capabilities(grpc_client, model_store):
    models = {m.name: m for m in grpc_client.list_models()}
    assert set(models) == {m.name for m in model_store.list()}
    fast = models[FAST_MODEL]
    assert (fast.architecture, fast.scale, fast.installed) == ("SRVGGNetCompact", 4, True)
    assert "fp32" in fast.precisions and fast.license
    assert [m.name for m in models.values() if m.is_default] == [model_store.default_model]


# --- results --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_type", ["u8", "u16", "f32"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_results_equal_the_in_process_engine(grpc_client, reference, photo, sample_type, channels):
    pixels = as_layout(photo[100:124, 60:92], channels, sample_type)
    options = dict(
        model=FAST_MODEL, colour_fidelity=channels == 3, auto_contrast=0.5 if channels == 4 else 0.0
    )
    remote = grpc_client.enhance_array(pixels, timeout=120, **options)
    local = reference.enhance(pixels, EnhanceOptions(**options))
    assert remote.dtype == pixels.dtype and remote.shape == (96, 128, channels)
    np.testing.assert_array_equal(remote, local)


def test_options_reach_the_engine(grpc_client, reference, photo):
    pixels = as_layout(photo[:20, :30], 4, "u8")
    options = dict(model=FAST_MODEL, scale=1.5, alpha_mode="bicubic", tile=16)
    remote = grpc_client.enhance_array(pixels, timeout=120, **options)
    assert remote.shape == (30, 45, 4)
    np.testing.assert_array_equal(remote, reference.enhance(pixels, EnhanceOptions(**options)))


def test_linear_light_is_returned_in_linear_light(grpc_client, reference, photo):
    pixels = as_layout(photo[:16, :16], 3, "f32")
    info, data = grpc_client.enhance(
        pixels.tobytes(), 16, 16, 3, "f32", colour_encoding="linear", model=FAST_MODEL
    )
    assert info.colour_encoding == "linear"
    local = reference.enhance(pixels, EnhanceOptions(model=FAST_MODEL, linear=True))
    np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(local.shape), local)


def test_progress_goes_through_every_stage_in_order(grpc_client, photo):
    events = []
    grpc_client.enhance_array(photo[:40, :40], model=FAST_MODEL, tile=16, on_progress=events.append)
    stages = [e.stage for e in events]
    assert stages[0] == "queued"
    order = ["queued", "loading model", "enhancing", "finishing"]
    assert [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]] == order
    tiles = [e for e in events if e.stage == "enhancing"]
    assert len(tiles) > 1 and tiles[-1].done == tiles[-1].total
    assert [e.done for e in tiles] == sorted(e.done for e in tiles)


def test_default_model_is_used_when_none_is_named(grpc_client, reference, model_store):
    pixels = np.random.default_rng(4).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    remote = grpc_client.enhance_array(pixels, timeout=300)
    np.testing.assert_array_equal(
        remote, reference.enhance(pixels, EnhanceOptions(model=model_store.default_model))
    )


# --- cancellation, disconnection, deadlines -----------------------------------------------------------


def test_cancel_mid_job_frees_the_worker(stub, grpc_client):
    call = start_long_job(stub)
    call.cancel()
    assert small_job_seconds(grpc_client) < PROMPT_S


def test_progress_callback_that_raises_cancels_the_job(grpc_client):
    class Stop(Exception):
        pass

    def stop_when_enhancing(event: core.ProgressEvent) -> None:
        if event.stage == "enhancing":
            raise Stop

    pixels = np.zeros((LONG_JOB_SIDE, LONG_JOB_SIDE, 3), np.uint8)
    with pytest.raises(Stop):
        grpc_client.enhance_array(pixels, model=FAST_MODEL, tile=16, on_progress=stop_when_enhancing)
    assert small_job_seconds(grpc_client) < PROMPT_S


def test_client_killed_mid_job_frees_the_worker(grpc_server, grpc_client):
    # Like GIMP killing the plug-in process: no goodbye, the connection just drops.
    script = (
        "import sys, numpy as np\n"
        "from image_enhancer.client.grpc_client import EnhancerClient\n"
        "def report(event):\n"
        "    if event.stage == 'enhancing':\n"
        "        print('enhancing', flush=True)\n"
        "        sys.stdin.read()\n"
        f"pixels = np.zeros(({LONG_JOB_SIDE}, {LONG_JOB_SIDE}, 3), np.uint8)\n"
        "EnhancerClient(sys.argv[1]).enhance_array(pixels,"
        f" model='{FAST_MODEL}', tile=16, on_progress=report)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, grpc_server.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "enhancing"
        child.kill()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert small_job_seconds(grpc_client) < PROMPT_S


def test_deadline_exceeded_stops_the_job(grpc_client):
    started = time.monotonic()
    with pytest.raises(EnhancerError) as caught:
        grpc_client.enhance_array(
            np.zeros((LONG_JOB_SIDE, LONG_JOB_SIDE, 3), np.uint8), model=FAST_MODEL, tile=16, timeout=3.0
        )
    assert caught.value.kind == "deadline" and time.monotonic() - started < 3.0 + PROMPT_S
    assert small_job_seconds(grpc_client) < PROMPT_S


# --- validation -----------------------------------------------------------------------------------------


def start(width=4, height=4, channels=3, sample_type=pb.SAMPLE_TYPE_U8, **options) -> pb.EnhanceRequest:
    header = pb.ImageHeader(width=width, height=height, channels=channels, sample_type=sample_type)
    options.setdefault("model", FAST_MODEL)
    return pb.EnhanceRequest(start=pb.EnhanceStart(image=header, options=pb.EnhanceOptions(**options)))


def chunk(size: int) -> pb.EnhanceRequest:
    return pb.EnhanceRequest(chunk=bytes(size))


MIB = wire.MIB
BIG = dict(width=1024, height=1024, channels=3)  # 3 MiB: room for several chunks
HUGE = dict(width=2048, height=1024, channels=3)  # 6 MiB

REFUSALS = {
    "no messages": ([], grpc.StatusCode.INVALID_ARGUMENT, "before its start message"),
    "chunk first": ([chunk(48)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    "start without header": (
        [pb.EnhanceRequest(start=pb.EnhanceStart())],
        grpc.StatusCode.INVALID_ARGUMENT,
        "no image header",
    ),
    "two starts": ([start(), start()], grpc.StatusCode.INVALID_ARGUMENT, "exactly once"),
    "zero width": ([start(width=0), chunk(1)], grpc.StatusCode.INVALID_ARGUMENT, "positive"),
    "five channels": ([start(channels=5)], grpc.StatusCode.INVALID_ARGUMENT, "channels must be"),
    "no sample type": ([start(sample_type=0)], grpc.StatusCode.INVALID_ARGUMENT, "SAMPLE_TYPE_UNSPECIFIED"),
    "unknown sample type": ([start(sample_type=9)], grpc.StatusCode.INVALID_ARGUMENT, "got 9"),
    "unknown alpha mode": ([start(alpha_mode=7)], grpc.StatusCode.INVALID_ARGUMENT, "alpha_mode"),
    "scale below one": (
        [start(scale=0.5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "scale must be between 1 and 8",
    ),
    "scale not a number": ([start(scale=float("nan"))], grpc.StatusCode.INVALID_ARGUMENT, "scale"),
    "strength out of range": ([start(strength=1.5)], grpc.StatusCode.INVALID_ARGUMENT, "strength"),
    "strength on an unpaired model": ([start(strength=0.5)], grpc.StatusCode.INVALID_ARGUMENT, "PSNR/GAN"),
    "tile too small": ([start(tile=3)], grpc.StatusCode.INVALID_ARGUMENT, "tile size"),
    "contrast out of range": ([start(auto_contrast=2)], grpc.StatusCode.INVALID_ARGUMENT, "auto_contrast"),
    "unknown model": (
        [start(model="no-such-model")],
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'no-such-model'",
    ),
    "too many pixels": (
        [start(width=10_000, height=10_000)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "megapixels",
    ),
    "too few bytes": ([start(), chunk(47)], grpc.StatusCode.INVALID_ARGUMENT, "received 47 of 48 bytes"),
    "nothing after start": ([start()], grpc.StatusCode.INVALID_ARGUMENT, "received 0 of 48 bytes"),
    "too many bytes": ([start(), chunk(49)], grpc.StatusCode.INVALID_ARGUMENT, "too many bytes"),
    "bytes after the image": (
        [start(), chunk(48), chunk(1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "too many bytes",
    ),
    "empty chunk": ([start(), chunk(0), chunk(48)], grpc.StatusCode.INVALID_ARGUMENT, "has 0 bytes"),
    "small chunk before the last": (
        [start(**BIG), chunk(MIB // 2), chunk(2 * MIB), chunk(MIB // 2)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "only the last may be smaller",
    ),
    "chunk over 4 MiB": ([start(**HUGE), chunk(4 * MIB + 1)], grpc.StatusCode.INVALID_ARGUMENT, "1-4 MiB"),
    "message over the limit": (
        [start(**HUGE), chunk(5 * MIB)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "message",
    ),
    "start after chunks": (
        [start(**BIG), chunk(MIB), start()],
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly once",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_requests_are_refused_with_a_clear_status(stub, case):
    requests, code, message = REFUSALS[case]
    got_code, details = status_of(requests, stub)
    assert got_code == code, details
    assert message in details


def test_wrong_sizes_through_the_client_are_caught_before_sending(grpc_client):
    with pytest.raises(EnhancerError, match="needs 48 bytes, got 47") as caught:
        grpc_client.enhance(b"\0" * 47, 4, 4, 3, "u8", model=FAST_MODEL)
    assert caught.value.kind == "invalid"


def test_not_installed_model_is_not_found_with_the_install_command(grpc_client, model_store):
    missing = [m.name for m in model_store.list() if not m.installed]
    if not missing:
        pytest.skip("every model of the manifest is installed here")
    with pytest.raises(EnhancerError, match="install.py --models") as caught:
        grpc_client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=missing[0])
    assert caught.value.kind == "not_found"


def test_damaged_model_file_is_failed_precondition_with_the_reinstall_command(damaged_model_server):
    with EnhancerClient(damaged_model_server.address) as client:
        with pytest.raises(EnhancerError) as caught:
            client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=FAST_MODEL, timeout=60)
        assert caught.value.code == "FAILED_PRECONDITION"
        assert "sha256" in caught.value.message
        assert f"python install.py --models {FAST_MODEL}" in caught.value.message
        assert client.health() == "SERVING"


def test_garbage_and_truncated_streams_leave_the_server_serving(grpc_server, stub, grpc_client):
    # Bytes that are not an EnhanceRequest at all.
    with grpc.insecure_channel(grpc_server.address) as channel:
        raw = channel.stream_stream(wire.ENHANCE_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(iter([b"\xff\xff\xff\xff"]), timeout=30))
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    # An upload abandoned halfway: the client cancels after one of three chunks.
    sent = threading.Event()

    def half_upload():
        yield start(**BIG)
        yield chunk(MIB)
        sent.set()
        time.sleep(30)  # never finishes: the call is cancelled first

    call = stub.Enhance(half_upload())
    assert sent.wait(30)
    time.sleep(0.3)
    call.cancel()
    # Nothing leaked: the queue slot was given back and other work goes on.
    assert small_job_seconds(grpc_client) < PROMPT_S
    assert_slots_given_back(grpc_server.jobs)


def test_stalled_upload_is_abandoned_and_frees_its_slot(make_enhancer):
    running = serve(make_enhancer(), "127.0.0.1:0", max_queue=1, warm_up=[], upload_limits=UploadLimits(1.0))
    release = threading.Event()

    def stalled_upload():
        yield start(**BIG)
        yield chunk(MIB)
        release.wait(60)  # a client that stops sending but keeps the connection open

    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Enhance(stalled_upload(), timeout=60))
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "upload timed out after 1 s" in caught.value.details()
            assert time.monotonic() - started < 30
            assert_slots_given_back(running.jobs)
            with EnhancerClient(running.address) as client:  # the only slot is free again
                assert small_job_seconds(client) < PROMPT_S
    finally:
        release.set()
        running.stop()


# --- the queue --------------------------------------------------------------------------------------------


def test_full_queue_refuses_with_resource_exhausted(make_enhancer):
    running = serve(make_enhancer(), "127.0.0.1:0", max_queue=1, warm_up=[])
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            first = start_long_job(stub)
            second = stub.Enhance(iter(long_job_requests()))
            assert next(second).progress.queue_position == 1  # queued behind the running job
            with EnhancerClient(running.address) as client, pytest.raises(EnhancerError) as caught:
                client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=FAST_MODEL)
            assert caught.value.kind == "queue_full" and "queue is full" in str(caught.value)
            second.cancel()
            first.cancel()
            with EnhancerClient(running.address) as client:
                assert small_job_seconds(client) < PROMPT_S
    finally:
        running.stop()


def test_queued_jobs_learn_when_they_move_up(make_enhancer):
    running = serve(make_enhancer(), "127.0.0.1:0", max_queue=3, warm_up=[])
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            first = start_long_job(stub)
            second = stub.Enhance(iter(long_job_requests()))
            assert next(second).progress.queue_position == 1
            third = stub.Enhance(iter(long_job_requests()))
            assert next(third).progress.queue_position == 2
            second.cancel()
            assert next(third).progress.queue_position == 1
            first.cancel()
            stages = []
            for response in third:
                stages.append(response.progress.stage)
                if response.progress.stage == "enhancing":
                    break
            assert stages[0] == "loading model"  # it is now the running job
            third.cancel()
    finally:
        running.stop()


def test_eight_concurrent_clients_get_every_result_right(grpc_server, reference):
    rng = np.random.default_rng(3)
    jobs = []
    for client_index in range(8):
        for job_index in range(3):
            side_h, side_w = 8 + 2 * client_index, 10 + job_index
            sample_type = ("u8", "u16", "f32")[(client_index + job_index) % 3]
            pixels = as_layout(rng.integers(0, 256, (side_h, side_w, 3), dtype=np.uint8), 3, sample_type)
            jobs.append((client_index, pixels))
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run_client(client_index: int) -> None:
        try:
            with EnhancerClient(grpc_server.address) as client:
                for index, (owner, pixels) in enumerate(jobs):
                    if owner == client_index:
                        results[index] = client.enhance_array(pixels, model=FAST_MODEL, timeout=300)
        except BaseException as error:  # collected and reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert sorted(results) == list(range(len(jobs)))
    for index, (_, pixels) in enumerate(jobs):
        np.testing.assert_array_equal(
            results[index], reference.enhance(pixels, EnhanceOptions(model=FAST_MODEL))
        )
