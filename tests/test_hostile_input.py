"""Hostile and careless input against `image-enhancer enhance` and `serve`: each hole found in review,
closed and kept closed. The property-based side of the same promise is tests/test_fuzz.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tifffile
from conftest import FAST_MODEL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.imagefiles import ImageFile, ImageFileError, read_image, write_image
from image_enhancer.server.app import serve
from image_enhancer.server.service import UploadLimits
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.wire import MIB

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    with Image.open(DATA / "cups_192.png") as im:
        im.convert("RGB").crop((40, 40, 72, 64)).save(tmp_path / "in.png")
    return tmp_path / "in.png"


def start_message(width: int = 64, height: int = 64, **options: object) -> pb.EnhanceRequest:
    header = pb.ImageHeader(width=width, height=height, channels=3, sample_type=pb.SAMPLE_TYPE_U8)
    return pb.EnhanceRequest(start=pb.EnhanceStart(image=header, options=pb.EnhanceOptions(**options)))


def chunk(size: int) -> pb.EnhanceRequest:
    return pb.EnhanceRequest(chunk=b"\0" * size)


# --- 1. an input is never written, whichever way two paths name it --------------------------------------


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.parametrize("remote", [False, True], ids=["local", "server"])
def test_output_hard_linked_to_the_input_is_refused(model_store, grpc_server, photo: Path, remote, capsys):
    hard = photo.with_name("hard.png")
    os.link(photo, hard)
    before = snapshot(photo)
    args = ["enhance", str(photo), "-o", str(hard), "--overwrite", "-m", FAST_MODEL]
    assert main(args + (["--server", grpc_server.address] if remote else [])) == 1
    assert "same file as the input" in capsys.readouterr().err
    assert snapshot(photo) == before


def test_output_hard_linked_to_another_input_of_the_batch_is_refused(model_store, photo: Path, capsys):
    folder = photo.parent / "in"
    folder.mkdir()
    first, second = folder / "a.png", folder / "b.png"
    photo.rename(first)
    os.link(first, second)
    out = photo.parent / "out"
    out.mkdir()
    os.link(second, out / "a.png")  # writing a's result here would replace b, not yet read
    before = snapshot(second)
    code = main(["enhance", str(folder), "-o", str(out), "--overwrite", "-m", FAST_MODEL, "--scale", "1"])
    assert code == 1
    assert "same file as the input" in capsys.readouterr().err
    assert snapshot(second) == before


def test_replacing_an_output_never_writes_into_its_old_contents(tmp_path: Path):
    """An existing output is replaced as a whole (write beside it, then rename): other names for
    the old file keep it, and the new file gets the usual permissions."""
    old, other_name = tmp_path / "old.png", tmp_path / "other.png"
    write_image(old, ImageFile(np.zeros((4, 4, 3), np.uint8)))
    os.link(old, other_name)
    write_image(old, ImageFile(np.full((8, 8, 3), 200, np.uint8)))
    assert read_image(other_name).pixels.max() == 0
    assert read_image(old).pixels.min() == 200
    assert (old.stat().st_mode & 0o777) == (0o666 & ~current_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png", "other.png"]  # no temporary left


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- 2. a second server on a busy TCP port refuses to start ---------------------------------------------


def test_second_server_on_a_busy_tcp_port_is_refused(grpc_server, make_enhancer):
    with pytest.raises(OSError, match="in use"):
        serve(make_enhancer(), grpc_server.address, warm_up=[])


def test_cli_serve_on_a_busy_port_exits_with_a_clear_message(grpc_server):
    result = subprocess.run(
        [sys.executable, "-m", "image_enhancer", "serve", "--address", grpc_server.address, "--no-warm-up"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "in use" in result.stderr and "Traceback" not in result.stderr


# --- 3. idle and slow uploads cannot starve the server --------------------------------------------------


@pytest.fixture()
def small_server(make_enhancer):
    running = serve(
        make_enhancer(), "127.0.0.1:0", max_queue=2, warm_up=[], upload_limits=UploadLimits(idle_s=3.0)
    )
    yield running
    running.stop()


def idle_requests(release: threading.Event, send_start: bool) -> Iterator[pb.EnhanceRequest]:
    if send_start:
        yield start_message(model=FAST_MODEL)
    release.wait(60)


def test_health_answers_within_a_second_while_100_idle_streams_are_open(small_server):
    release = threading.Event()
    channels = [grpc.insecure_channel(small_server.address) for _ in range(4)]
    calls = []
    try:
        for index in range(100):
            stub = enhancer_pb2_grpc.EnhancerStub(channels[index % len(channels)])
            # Some send nothing at all, some send a start message and then nothing.
            calls.append(stub.Enhance(idle_requests(release, send_start=index % 2 == 0), timeout=60))
        time.sleep(1.0)  # let every stream reach the server
        with grpc.insecure_channel(small_server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            started = time.monotonic()
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < 1.0
        with EnhancerClient(small_server.address) as client:
            assert client.describe(timeout=1.0).max_queue == 2
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()


def test_health_answers_within_a_second_while_a_job_keeps_the_cores_busy(small_server):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)  # thousands of 16-pixel tiles: minutes
    with grpc.insecure_channel(small_server.address) as channel:
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        header = pb.ImageHeader(width=384, height=384, channels=3, sample_type=pb.SAMPLE_TYPE_U8)
        options = pb.EnhanceOptions(model=FAST_MODEL, tile=16)
        requests = [pb.EnhanceRequest(start=pb.EnhanceStart(image=header, options=options))]
        requests.append(pb.EnhanceRequest(chunk=pixels.tobytes()))
        call = stub.Enhance(iter(requests))
        try:
            assert any(r.progress.stage == "enhancing" for r in call)  # stops at the first one
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                started = time.monotonic()
                health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                assert time.monotonic() - started < 1.0
                time.sleep(0.2)
        finally:
            call.cancel()


def test_idle_upload_is_ended_with_a_message_that_says_so(small_server):
    release = threading.Event()
    try:
        with grpc.insecure_channel(small_server.address) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Enhance(idle_requests(release, send_start=False), timeout=60))
    finally:
        release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details() == "upload timed out after 3 s without data from the client"


def test_drip_fed_upload_hits_the_overall_upload_limit(make_enhancer):
    # Idle limit 2 s, but the whole 4 MiB must arrive within 2 s + 4 MiB / 2 MiB/s = 4 s.
    running = serve(
        make_enhancer(), "127.0.0.1:0", max_queue=1, warm_up=[],
        upload_limits=UploadLimits(idle_s=2.0, min_bytes_per_s=2 * MIB),
    )
    stop = threading.Event()

    def drip() -> Iterator[pb.EnhanceRequest]:
        yield start_message(width=1024, height=1366, model=FAST_MODEL)  # 4.2 MB
        while not stop.wait(1.0):  # 1 MiB a second: never idle, always too slow
            yield chunk(MIB)

    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = enhancer_pb2_grpc.EnhancerStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Enhance(drip(), timeout=60))
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert caught.value.details().startswith("upload timed out after 4 s")
            assert time.monotonic() - started < 15
        assert running.jobs.slots_taken == 0
    finally:
        stop.set()
        running.stop()


# --- 4. animations are refused, not cut to their first frame --------------------------------------------


def frames(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_animated_image_is_refused_with_a_clear_message(model_store, tmp_path: Path, suffix, capsys):
    source = tmp_path / f"anim{suffix}"
    first, *rest = frames()
    first.save(source, save_all=True, append_images=rest)
    out = tmp_path / f"out{suffix}"
    assert main(["enhance", str(source), "-o", str(out), "-m", FAST_MODEL]) == 1
    assert "has 3 frames" in capsys.readouterr().err
    assert not out.exists()


def test_sixteen_bit_animated_png_is_refused(tmp_path: Path):
    source = tmp_path / "anim16.png"
    first, *rest = [im.convert("RGBA") for im in frames()]
    first.save(source, save_all=True, append_images=rest)
    with pytest.raises(ImageFileError, match="3 frames"):
        read_image(source)


def test_multi_page_tiff_is_refused_but_a_preview_page_is_not(tmp_path: Path):
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tiff:
        for _ in range(2):
            tiff.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageFileError, match="2 frames"):
        read_image(pages)
    with_preview = tmp_path / "preview.tif"
    with tifffile.TiffWriter(with_preview) as tiff:
        tiff.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb", subifds=1)
        tiff.write(np.zeros((8, 8, 3), np.uint8), photometric="rgb", subfiletype=1)
    assert read_image(with_preview).pixels.shape == (16, 16, 3)


# --- 5. errors never echo unbounded input ---------------------------------------------------------------


def test_huge_model_name_gets_not_found_with_a_short_message(grpc_client):
    name = "x" * 200_000
    with pytest.raises(EnhancerError) as caught:
        grpc_client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=name)
    assert caught.value.kind == "not_found"
    assert caught.value.message.startswith("unknown model 'xxx")
    assert "200002 characters" in caught.value.message
    assert len(caught.value.message) < 1000


def test_huge_alpha_mode_value_is_a_short_invalid_argument(grpc_server):
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Enhance(iter([start_message(model=FAST_MODEL, alpha_mode=2**31 - 1)]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details()) < 200


# --- 6. numeric options are checked when the command line is parsed -------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["serve", "--max-input-megapixels", "nan"], "megapixels: must be a finite"),
        (["serve", "--max-input-megapixels", "inf"], "megapixels: must be a finite"),
        (["serve", "--max-megapixels", "-1"], "--max-megapixels: must be above 0"),
        (["serve", "--max-input-megapixels", "0"], "megapixels: must be above 0"),
        (["serve", "--max-queue", "0"], "--max-queue: must be between 1 and"),
        (["serve", "--max-queue", "many"], "--max-queue: must be a whole number"),
        (["activate", "--idle-stop", "nan"], "--idle-stop: must be a finite number"),
        (["activate", "--idle-stop=-1"], "--idle-stop: must be between 0 and"),
        (["enhance", "a.png", "-o", "b.png", "--scale", "nan"], "--scale: must be a finite number"),
        (["enhance", "a.png", "-o", "b.png", "--scale", "0.5"], "--scale: must be between 1 and 8"),
        (["enhance", "a.png", "-o", "b.png", "--strength", "1.5"], "--strength: must be between 0 and 1"),
        (["enhance", "a.png", "-o", "b.png", "--tile=-5"], "--tile: must be 0 or between 16 and 8192"),
        (["enhance", "a.png", "-o", "b.png", "--auto-contrast=-inf"], "--auto-contrast: must be a finite"),
        (["enhance", "a.png", "-o", "b.png", "--max-output-megapixels", "0"], "megapixels: must be above 0"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(arguments, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_a_tiny_input_limit_still_gives_a_server_that_describes_itself(make_enhancer):
    from image_enhancer.engine.enhancer import Enhancer

    running = serve(Enhancer(make_enhancer().store, device="cpu", max_pixels=1), "127.0.0.1:0", warm_up=[])
    try:
        with EnhancerClient(running.address) as client:
            assert client.describe().max_pixels == 1
    finally:
        running.stop()


# --- 7. ordinary client behaviour is one INFO line, not a logged traceback ------------------------------


def test_cancels_disconnects_timeouts_and_oversized_messages_log_no_error(small_server, caplog):
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(
        small_server.address, options=[("grpc.max_send_message_length", 16 * MIB)]
    ) as channel:
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        # Cancelled mid-upload.
        release = threading.Event()
        call = stub.Enhance(idle_requests(release, send_start=True))
        time.sleep(0.5)
        call.cancel()
        # The client's own deadline passes.
        with pytest.raises(grpc.RpcError):
            list(stub.Enhance(idle_requests(release, send_start=True), timeout=0.5))
        # The server's idle limit ends the upload.
        with pytest.raises(grpc.RpcError):
            list(stub.Enhance(idle_requests(release, send_start=False), timeout=30))
        # A message over the server's receive limit.
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Enhance(iter([start_message(model=FAST_MODEL), chunk(5 * MIB)]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
    time.sleep(0.5)  # the server notices the cancelled calls
    with EnhancerClient(small_server.address) as client:
        assert client.health() == "SERVING"
    service_records = [r for r in caplog.records if r.name.startswith("image_enhancer.server")]
    assert not [r for r in service_records if r.levelno >= logging.WARNING or r.exc_info], [
        r.getMessage() for r in service_records
    ]
    messages = [r.getMessage() for r in service_records if r.levelno == logging.INFO]
    assert any("cancelled or went away" in m for m in messages)
    assert any("upload timed out" in m for m in messages)

