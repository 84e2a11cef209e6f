"""`image-enhancer enhance` against what a file system can hold instead of a picture, and against other
writers: named pipes, sockets and folders named like images; two runs writing one folder at once; a full
disk, a read-only one and a file-size limit; a writer killed half-way. Real files, real mounts, the real
compact model."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alarm import time_limit
from conftest import FAST_MODEL
from PIL import Image

from image_enhancer.batch import Enhance, _process, collect_jobs, input_identities
from image_enhancer.cli import main
from image_enhancer.imagefiles import read_image
from image_enhancer.request import EnhanceOptions

DATA = Path(__file__).resolve().parent / "data"
# Longer than any of these runs takes, far shorter than "for ever": what a hang is failed at.
HANG_S = 60


def photo(path: Path, left: int = 0) -> Path:
    with Image.open(DATA / "forest_256.png") as im:
        im.convert("RGB").crop((left, 0, left + 40, 32)).save(path)
    return path


def hidden_files(folder: Path) -> list[str]:
    """Temporary files, ours or anyone's: they start with a dot."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- 1. only regular files are read -------------------------------------------------------------------


def test_pipes_sockets_devices_and_folders_named_like_images_in_a_folder_are_skipped(
    model_store, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Walking a folder, whatever is named like an image but is not a regular file is left out with a
    one-line reason, and the batch does the rest and exits 0. Opening the pipe would block for ever."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "good.png")
    os.mkfifo(folder / "pipe.png")
    listener = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(folder)  # a socket's path is limited to about 100 bytes: bind it by its own name
    listener.bind("socket.jpg")
    (folder / "null.webp").symlink_to(os.devnull)
    (folder / "album.png").mkdir()
    out = tmp_path / "out"
    started = time.monotonic()
    try:
        with time_limit(HANG_S):
            code = main(["enhance", str(folder), "-o", str(out), "-m", FAST_MODEL, "--scale", "2"])
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert code == 0, err
    assert time.monotonic() - started < HANG_S
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert f"skipped {folder / 'pipe.png'}: a named pipe (FIFO), not an image file" in err
    assert f"skipped {folder / 'socket.jpg'}: a socket, not an image file" in err
    assert f"skipped {folder / 'null.webp'}: a character device, not an image file" in err
    assert f"skipped {folder / 'album.png'}: a folder (pass --recursive" in err


def test_a_named_pipe_given_as_an_input_fails_at_once_and_the_rest_goes_on(
    model_store, tmp_path: Path, capsys
) -> None:
    """Named on the command line it is a failed file: exit 1, the reason names it, the other input is done."""
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    good = photo(tmp_path / "good.png")
    out = tmp_path / "out"
    with time_limit(HANG_S):
        code = main(["enhance", str(pipe), str(good), "-o", str(out), "-m", FAST_MODEL, "--scale", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{pipe} is a named pipe (FIFO), not an image file" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


# --- 2. two runs into one folder: each output written once, none replaced ----------------------------


def test_two_batches_writing_one_folder_at_once_never_replace_each_other(make_enhancer, tmp_path: Path):
    """Two batches over the same inputs into one folder, neither with --overwrite, held in step so both
    have checked that each output is free before either writes it (the race of two real runs, made
    certain). Each output is written by exactly one of them; the other says it appeared meanwhile."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        photo(folder / f"p{index}.png", left=40 * index)
    out = tmp_path / "out"
    out.mkdir()
    barrier = threading.Barrier(2, timeout=HANG_S)
    outcomes: dict[int, dict[str, str]] = {1: {}, 2: {}}

    def batch(scale: int) -> None:
        engine = make_enhancer()
        options = EnhanceOptions(model=FAST_MODEL, scale=scale)

        def run(pixels: np.ndarray, report: object) -> np.ndarray:
            result = engine.enhance(pixels, options)
            barrier.wait()  # both runs found the output free and are about to write it
            return result

        jobs = collect_jobs([str(folder)], str(out), None, False)
        inputs = input_identities([job.source for job in jobs])
        for job in jobs:
            try:
                _process(job, Enhance(run, engine.max_pixels), job.source.name, inputs, False, False)
                outcomes[scale][job.target.name] = "written"
            except (ValueError, OSError) as error:
                outcomes[scale][job.target.name] = str(error)

    threads = [threading.Thread(target=batch, args=(scale,)) for scale in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S)
    for name in ("p0.png", "p1.png", "p2.png"):
        results = {scale: outcomes[scale].get(name) for scale in (1, 2)}
        winners = [scale for scale, outcome in results.items() if outcome == "written"]
        assert len(winners) == 1, f"{name}: {results}"
        (loser,) = {1, 2} - set(winners)
        assert f"{out / name} appeared while this run was writing it; not replaced" in results[loser]
        assert read_image(out / name).pixels.shape == (32 * winners[0], 40 * winners[0], 3)
    assert hidden_files(out) == []


def test_the_no_replace_publish_holds_where_hard_links_are_missing(tmp_path: Path) -> None:
    """The routes taken on file systems without hard links (FAT, some shares) refuse an existing target
    too: renameat2(RENAME_NOREPLACE), and creating the target exclusively before renaming over it."""
    from image_enhancer import publish

    target = tmp_path / "out.png"
    target.write_bytes(b"theirs")
    for route in (publish._rename_without_replacing, publish._claim_then_replace):
        mine = tmp_path / "mine"
        mine.write_bytes(b"mine")
        with pytest.raises(FileExistsError):
            route(mine, target)
        assert target.read_bytes() == b"theirs"
        fresh = tmp_path / f"{route.__name__}.png"
        route(mine, fresh)
        assert fresh.read_bytes() == b"mine" and not mine.exists()


# --- 3. full disk, read-only disk, file-size limit: the message names the file, nothing is left ---------


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A small tmpfs: a disk that really fills up. Needs root; CI runs as root, so there it must work."""
    mount_point.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                                capture_output=True, text=True)
        reason = result.stderr.strip()
    except FileNotFoundError as error:
        result, reason = None, str(error)
    if result is None or result.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs under CI ({reason}); CI must run as root")
        pytest.skip(f"cannot mount a tmpfs here ({reason}); run as root to test a full disk")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path, leave: int) -> None:
    status = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, status.f_bavail * status.f_frsize - leave)))


@pytest.mark.parametrize("suffix", [".png", ".tif"])  # Pillow's writer, and tifffile's (numpy's tofile)
def test_a_full_disk_is_reported_naming_the_file_and_leaves_no_temporary(
    model_store, tmp_path: Path, capsys, suffix: str
) -> None:
    source = photo(tmp_path / "in.png")
    with mounted_tmpfs(tmp_path / "disk", "size=1m") as disk:
        fill(disk, leave=4096)
        out = disk / f"result{suffix}"
        code = main(["enhance", str(source), "-o", str(out), "-m", FAST_MODEL])
        err = capsys.readouterr().err
        assert code == 1
        assert f"no space left on the device while writing {out}" in err
        assert "requested and" not in err and "Errno" not in err
        assert not out.exists()
        assert hidden_files(disk) == []


def test_a_read_only_disk_is_reported_naming_the_file(model_store, tmp_path: Path, capsys) -> None:
    source = photo(tmp_path / "in.png")
    with mounted_tmpfs(tmp_path / "disk", "size=1m,ro") as disk:
        out = disk / "result.png"
        assert main(["enhance", str(source), "-o", str(out), "-m", FAST_MODEL]) == 1
        assert f"read-only file system: cannot write {out}" in capsys.readouterr().err


WRITE_BIG_IMAGE = """
import sys
from pathlib import Path
import numpy as np
from image_enhancer.imagefiles import ImageFile, write_image
side = int(sys.argv[2])
pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
try:
    write_image(Path(sys.argv[1]), ImageFile(pixels))
except OSError as error:
    print(error)
    sys.exit(1)
"""


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_file_size_limit_is_reported_naming_the_file(tmp_path: Path, suffix: str) -> None:
    """RLIMIT_FSIZE (ulimit -f): the write stops short with EFBIG."""
    out = tmp_path / f"big{suffix}"
    limit = 64 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-c", WRITE_BIG_IMAGE, str(out), "256"], capture_output=True,
                            text=True, timeout=HANG_S, preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr
    assert f"{out} would be larger than this file system or this process's file-size limit" in result.stdout
    assert not out.exists() and hidden_files(tmp_path) == []


# --- 4. a writer killed half-way: the next run removes what it left, and only that --------------------


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_run(
    model_store, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITE_BIG_IMAGE, str(out / "big.png"), "2000"])

    def writing() -> bool:  # its temporary file has begun to fill (encoding takes seconds)
        return any((out / name).stat().st_size > 0 for name in hidden_files(out))

    deadline = time.monotonic() + HANG_S
    while not writing() and time.monotonic() < deadline and writer.poll() is None:
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (left,) = hidden_files(out)
    assert not (out / "big.png").exists()

    code = main(["enhance", str(photo(tmp_path / "next.png")), "-o", str(out / "next.png"), "-m", FAST_MODEL])
    assert code == 0
    assert hidden_files(out) == []
    assert f"removed {out / left}: a temporary file left by an interrupted run" in capsys.readouterr().err

    # A temporary file of a writer still running is its own; one older than any write is stale whoever
    # wrote it.
    from image_enhancer.publish import STALE_AFTER_S, temporary_name

    running = subprocess.Popen(["sleep", str(HANG_S)])
    try:
        live = out / temporary_name(out / "live.png", running.pid)
        old = out / temporary_name(out / "old.png", running.pid)
        live.touch()
        old.touch()
        long_ago = time.time() - STALE_AFTER_S - 60
        os.utime(old, (long_ago, long_ago))
        code = main(["enhance", str(tmp_path / "next.png"), "-o", str(out / "again.png"), "-m", FAST_MODEL])
        assert code == 0
        assert hidden_files(out) == [live.name]
    finally:
        running.kill()
        running.wait()
