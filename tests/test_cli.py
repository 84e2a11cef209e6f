"""The `image-enhancer` command on real files with the real default model."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.engine.devices import preferred_cpu_runtime
from image_enhancer.imagefiles import ImageFile, read_image, write_image

REPO = Path(__file__).resolve().parents[1]
FAST_MODEL = "realesr-animevideov3"


@pytest.fixture()
def small_photo(tmp_path: Path) -> Path:
    with Image.open(REPO / "tests" / "data" / "forest_256.png") as im:
        im.crop((0, 0, 40, 32)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def test_enhance_one_file_with_the_default_model(model_store, small_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.png"
    assert main(["enhance", str(small_photo), "-o", str(out), "--compare"]) == 0
    result = read_image(out).pixels
    assert result.shape == (128, 160, 3)
    assert result.dtype == np.uint8
    assert (tmp_path / "result_compare.png").exists()


def test_sixteen_bit_input_gives_sixteen_bit_output(model_store, small_photo: Path, tmp_path: Path) -> None:
    pixels16 = read_image(small_photo).pixels.astype(np.uint16) * 257
    pixels16[:, :, 0] += np.arange(pixels16.shape[1], dtype=np.uint16)[None, :]  # sub-8-bit detail
    source = tmp_path / "deep.png"
    write_image(source, ImageFile(pixels16))
    out = tmp_path / "deep_x2.tif"
    assert main(["enhance", str(source), "-o", str(out), "-m", FAST_MODEL, "--scale", "2"]) == 0
    result = read_image(out).pixels
    assert result.dtype == np.uint16
    assert result.shape == (64, 80, 3)
    assert np.any(result % 257 != 0), "16-bit output must not be 8-bit values scaled up"


def test_batch_reports_a_bad_file_and_finishes_the_rest(
    model_store, small_photo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    small_photo.rename(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    code = main(["enhance", str(folder), "-o", str(out), "-m", FAST_MODEL, "--scale", "2"])
    assert code == 1
    assert (out / "good.png").exists()
    assert not (out / "bad.png").exists()


def test_input_is_never_overwritten(model_store, small_photo: Path) -> None:
    before = small_photo.read_bytes()
    code = main(["enhance", str(small_photo), "-o", str(small_photo), "--overwrite", "-m", FAST_MODEL])
    assert code == 1
    assert small_photo.read_bytes() == before


def test_pixel_limit_gives_a_clear_error(model_store, small_photo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "big.png"
    limit = ["--max-output-megapixels", "0.001"]
    code = main(["enhance", str(small_photo), "-o", str(out), "-m", FAST_MODEL, *limit])
    assert code == 1
    assert not out.exists()
    assert "pixel" in capsys.readouterr().err.lower()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that states its size but holds no pixels: what a reader sees before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [8000, 100_000])  # over our 40 MP limit; over Pillow's bomb limit too
def test_huge_input_is_refused_from_its_header(model_store, tmp_path: Path, capsys, side: int) -> None:
    source = png_header_only(tmp_path / "huge.png", side, side)
    code = main(["enhance", str(source), "-o", str(tmp_path / "out.png"), "-m", FAST_MODEL])
    assert code == 1
    err = capsys.readouterr().err
    assert "huge.png: failed" in err
    assert "over the limit" in err if side == 8000 else "exceeds limit" in err


def test_unknown_model_is_named_in_the_error(model_store, small_photo: Path, tmp_path: Path, capsys) -> None:
    code = main(["enhance", str(small_photo), "-o", str(tmp_path / "x.png"), "-m", "no-such-model"])
    assert code != 0
    assert "no-such-model" in capsys.readouterr().err


def test_models_command_lists_installed_models(model_store) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "image_enhancer", "models"], capture_output=True, text=True, check=True
    ).stdout
    assert "realesrgan-x4plus (default)" in listing
    assert "yes" in listing


# After a command ran: whether NumPy asked for huge pages, and OpenMP's wait policy.
_PROCESS_SETTINGS = """
import contextlib, io, os
from image_enhancer.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["models"])
from numpy._core import multiarray
print(multiarray._set_madvise_hugepage(False), os.environ["OMP_WAIT_POLICY"])
"""


@pytest.mark.parametrize(("chosen", "expected"), [({}, "False PASSIVE"), (
    {"NUMPY_MADVISE_HUGEPAGE": "1", "OMP_WAIT_POLICY": "ACTIVE"}, "True ACTIVE")])
def test_the_command_sets_its_process_defaults_unless_the_user_chose(chosen, expected) -> None:
    # Huge pages for NumPy's arrays made a 1024² job 40 % slower at the median (``set_process_defaults``).
    env = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "OMP_WAIT_POLICY")}
    command = [sys.executable, "-c", _PROCESS_SETTINGS]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env | chosen)
    assert result.stdout.split() == expected.split()


def test_devices_command_lists_the_cpu_runtimes_and_what_auto_picks() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "image_enhancer", "devices"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split()[:2] for line in listing.splitlines() if line.startswith("cpu")]
    assert sorted(rows) == [["cpu", "ncnn"], ["cpu", "openvino"], ["cpu", "pytorch"]]
    assert rows[0] == ["cpu", preferred_cpu_runtime()]  # the fastest CPU runtime first
    assert "auto picks:" in listing and "(software rasteriser" not in listing.split("auto picks:")[1]


def test_enhance_says_which_device_it_chose(model_store, small_photo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "result.png"
    assert main(["enhance", str(small_photo), "-o", str(out), "-m", FAST_MODEL, "--device", "cpu",
                 "--runtime", "pytorch"]) == 0
    err = capsys.readouterr().err
    assert "device: " in err and "(CPU, PyTorch)" in err


def test_models_command_without_weights_says_how_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGE_ENHANCER_HOME": str(tmp_path / "empty-home")}
    command = [sys.executable, "-m", "image_enhancer", "models"]
    listing = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    default_row = next(line for line in listing.splitlines() if "(default)" in line)
    assert default_row.split()[4] == "no"  # name, "(default)", arch, scale, installed
    assert "python install.py --models NAME" in listing


def test_default_model_is_sharper_than_bicubic(model_store, tmp_path: Path) -> None:
    """The demo's promise: a visibly better image, not just a bigger one."""
    from image_enhancer.batch import side_by_side

    with Image.open(REPO / "docs" / "samples" / "fallen_leaf_320x200.png") as im:
        im.crop((140, 60, 204, 124)).save(tmp_path / "leaf.png")
    out = tmp_path / "leaf_x4.png"
    assert main(["enhance", str(tmp_path / "leaf.png"), "-o", str(out)]) == 0
    result = read_image(out).pixels
    pair = side_by_side(read_image(tmp_path / "leaf.png").pixels, result)
    bicubic = pair[:, : result.shape[1]]

    def detail(image: np.ndarray) -> float:
        gray = image.astype(np.float64).mean(axis=2)
        laplacian = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
        return float(laplacian.var())

    assert detail(result) > 2.0 * detail(bicubic)
