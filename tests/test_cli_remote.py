"""`image-enhancer enhance --server ADDR`: the CLI sending its work to a real server on a loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_MODEL
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.engine.enhancer import EnhanceOptions
from image_enhancer.imagefiles import ImageFile, read_image, write_image

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    with Image.open(DATA / "cups_192.png") as im:
        im.convert("RGB").crop((50, 60, 90, 92)).save(tmp_path / "cups.png")
    return tmp_path / "cups.png"


@pytest.fixture()
def no_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty user cache for this process: work done in process would fail, so a result proves that
    the server did it."""
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(tmp_path / "empty-home"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_remote_result_equals_the_in_process_engine(
    grpc_server, make_enhancer, photo: Path, tmp_path: Path, no_local_weights
) -> None:
    pixels16 = read_image(photo).pixels.astype(np.uint16) * 257
    pixels16[:, :, 1] += np.arange(pixels16.shape[1], dtype=np.uint16)[None, :]  # sub-8-bit detail
    source = tmp_path / "deep.png"
    write_image(source, ImageFile(pixels16))
    out = tmp_path / "deep_x2.png"
    args = ["enhance", str(source), "-o", str(out), "--server", grpc_server.address, "-m", FAST_MODEL]
    assert main([*args, "--scale", "2", "--colour-fidelity"]) == 0
    result = read_image(out).pixels
    expected = make_enhancer().enhance(
        pixels16, EnhanceOptions(model=FAST_MODEL, scale=2, colour_fidelity=True)
    )
    assert result.dtype == np.uint16 and result.shape == (64, 80, 3)
# The server and this process each pick their CPU runtime from their own timings; runtimes round
    # alike within one 16-bit step.
    assert np.abs(result.astype(np.int32) - expected.astype(np.int32)).max() <= 1


def test_remote_batch_reports_a_bad_file_and_finishes_the_rest(
    grpc_server, photo: Path, tmp_path: Path, no_local_weights, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    photo.rename(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    args = ["enhance", str(folder), "-o", str(out), "--server", grpc_server.address, "-m", FAST_MODEL]
    assert main([*args, "--compare"]) == 1
    assert read_image(out / "good.png").pixels.shape == (128, 160, 3)
    assert (out / "good_compare.png").exists()
    assert not (out / "bad.png").exists()
    assert "bad.png: failed" in capsys.readouterr().err


def test_unknown_model_on_the_server_is_named(grpc_server, photo: Path, tmp_path: Path, capsys) -> None:
    args = ["enhance", str(photo), "-o", str(tmp_path / "x.png"), "--server", grpc_server.address]
    assert main([*args, "-m", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and FAST_MODEL in err


def test_server_down_is_one_clear_error_without_traceback(photo: Path, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    second = photo.with_name("second.png")
    second.write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    command = [sys.executable, "-m", "image_enhancer", "enhance", str(photo), str(second), "-o", str(out)]
    done = subprocess.run([*command, "--server", address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "not reachable" in done.stderr
    assert f"image-enhancer serve --address {address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("not reachable") == 1, "one message, not one per file"
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--server", "no-port-here"], "must be HOST:PORT or unix:PATH"),
        (["--server", "127.0.0.1:1", "--device", "cpu"], "--device"),
        (["--server", "127.0.0.1:1", "--max-megapixels", "4"], "--max-output-megapixels"),
    ],
)
def test_bad_remote_arguments_are_clear_errors(photo: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(["enhance", str(photo), "-o", str(tmp_path / "x.png"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_server_too_old_for_the_options_is_one_error_before_any_file(
    make_enhancer, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A server of protocol 1 knows nothing of faces and would enhance without them: the command line
    refuses once, before any file is read or written."""
    from image_enhancer.server import service
    from image_enhancer.server.app import serve

    monkeypatch.setattr(service, "PROTOCOL_VERSION", 1)  # what a server of the first protocol says
    old = serve(make_enhancer(), "127.0.0.1:0", warm_up=[])
    try:
        second = photo.with_name("second.png")
        second.write_bytes(photo.read_bytes())
        out = tmp_path / "out"
        args = ["enhance", str(photo), str(second), "-o", str(out), "--server", old.address, "--faces"]
        assert main(args) == 2
    finally:
        old.stop()
    err = capsys.readouterr().err
    assert err.count("protocol 1") == 1, err
    assert not out.exists()
