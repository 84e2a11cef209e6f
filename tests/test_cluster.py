"""`image-enhancer enhance --cluster`: the batch on a real one-machine Ray cluster (2 CPUs), with the real
engine and weights: the same files as the local batch, bit for bit; a worker killed mid-run and a driver
killed mid-run cost nothing but the rerun of what was missing; nothing is done twice.

Ray is the optional `cluster` extra: without it these tests are skipped, except under CI=true, where
they must run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from local_ray import ray_or_skip, start_local_ray
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.cluster.manifest import DONE, FOLDER_NAME, PENDING, Manifest, content_hash, job_key
from image_enhancer.imagefiles import read_image

DATA = Path(__file__).resolve().parent / "data"
FAST_MODEL = "realesr-animevideov3"
PHOTOS = 6


@pytest.fixture(scope="module")
def ray_cluster(model_store):
    """A one-machine Ray cluster with 2 CPUs, shared by the module (starting one takes seconds)."""
    ray = ray_or_skip()
    start_local_ray(ray)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """Small crops of real photos, each one different, and one file that is not an image."""
    folder = tmp_path / "in"
    folder.mkdir()
    with Image.open(DATA / "forest_256.png") as im:
        source = im.convert("RGB")
        for index in range(PHOTOS):
            crop = source.crop((index * 30, index * 20, index * 30 + 64, index * 20 + 48))
            crop.save(folder / f"p{index}.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


def enhance(inputs: list[str], out: Path, *extra: str) -> list[str]:
    return ["enhance", *inputs, "-o", str(out), "-m", FAST_MODEL, "--scale", "2", "--device", "cpu", *extra]


def done_records(out: Path) -> Counter:
    records = Manifest(out).records()
    return Counter((r["input"], r["output"]) for r in records if r["state"] == DONE)


def assert_all_done_once(out: Path, photos: Path) -> None:
    counts = done_records(out)
    expected = {(content_hash((photos / f"p{i}.png").read_bytes()), f"p{i}.png") for i in range(PHOTOS)}
    assert set(counts) == expected
    assert all(count == 1 for count in counts.values()), counts


class ActorKiller(threading.Thread):
    """Kills (SIGKILL) the first enhancer process seen starting a file: its manifest file is named after
    its process, and its first line is the "pending" record written before the work."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.folder = out / FOLDER_NAME
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.folder.glob("*.jsonl") if self.folder.exists() else ():
                if PENDING in path.read_text():
                    pid = int(path.stem.rpartition("-")[2])
                    assert pid != os.getpid()
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    return
            time.sleep(0.005)


def test_cluster_batch_equals_the_local_batch_and_survives_a_killed_worker(
    ray_cluster, photos, tmp_path, capsys
):
    local = tmp_path / "local"
    assert main(enhance([str(photos)], local)) == 1  # the broken file fails, the rest are done
    out = tmp_path / "cluster"
    killer = ActorKiller(out)
    killer.start()
    code = main(enhance([str(photos)], out, "--cluster", "auto", "--cluster-actor-cpus", "1"))
    killer.stop.set()
    killer.join()
    err = capsys.readouterr().err
    assert killer.killed is not None, "no enhancer was seen at work"
    assert code == 1 and "broken.png: failed" in err and "cannot read image" in err
    # Ray restarted the killed actor and retried its file: the run still finished every file.
    assert f"{PHOTOS} done, 0 already done, 1 failed, 0 remaining of {PHOTOS + 1}" in err
    for index in range(PHOTOS):
        name = f"p{index}.png"
        # Each process picks its CPU runtime from its own timings, and runtimes round alike within a level.
        cluster, alone = (read_image(folder / name).pixels.astype(np.int16) for folder in (out, local))
        assert np.abs(cluster - alone).max() <= 1, name
    assert read_image(out / "p0.png").pixels.shape == (96, 128, 3)
    assert not (out / "broken.png").exists()
    assert_all_done_once(out, photos)

    # A changed option is new work (the next test reruns the same work), which never replaces the
    # old outputs without --overwrite.
    before = (out / "p0.png").read_bytes()
    assert main(enhance([str(photos)], out, "--cluster", "auto", "--colour-fidelity")) == 1
    err = capsys.readouterr().err
    assert f"0 done, 0 already done, {PHOTOS + 1} failed" in err and "exists (pass --overwrite" in err
    assert (out / "p0.png").read_bytes() == before


def test_a_rerun_after_the_driver_was_killed_does_only_what_is_missing(
    ray_cluster, photos, tmp_path, capsys
):
    # Inputs as URIs: the same path through pyarrow's file systems, as s3:// or gs:// would be read.
    (photos / "broken.png").unlink()
    uris = [(photos / f"p{index}.png").as_uri() for index in range(PHOTOS)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "image_enhancer",
               *enhance(uris, out, "--cluster", ray_cluster, "--cluster-actor-cpus", "2")]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not done_records(out) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
    finally:
        _, stderr = driver.communicate(timeout=60)
    first = done_records(out)
    assert first and len(first) < PHOTOS, stderr.decode(errors="replace")[-2000:]

    assert main(enhance(uris, out, "--cluster", "auto")) == 0
    err = capsys.readouterr().err
    assert f"{PHOTOS - len(first)} done, {len(first)} already done, 0 failed, 0 remaining" in err
    assert_all_done_once(out, photos)
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [f"p{index}.png" for index in range(PHOTOS)]


def test_the_command_line_never_imports_ray():
    probe = "import sys, image_enhancer.cli as c; c.build_parser(); sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_the_manifest_ignores_a_torn_line_and_keys_by_settings(tmp_path):
    manifest = Manifest(tmp_path)
    writer = manifest.writer()
    key = job_key("weights", {"options": {"scale": 2}})
    writer.write(PENDING, key, "h1", "a.png")
    writer.write(DONE, key, "h1", "a.png")
    writer.write(PENDING, key, "h2", "b.png")
    writer.close()
    with open(writer.path, "a", encoding="utf-8") as file:  # a process killed in the middle of a line
        file.write('{"state": "done", "key": "' + key)
    assert manifest.done(key) == {("h1", "a.png")}
    assert manifest.claims(key) == {("h1", "a.png"), ("h2", "b.png")}
    other = job_key("weights", {"options": {"scale": 3}})
    assert other != key and manifest.done(other) == set()
    assert job_key("other weights", {"options": {"scale": 2}}) != key
    assert json.loads(writer.path.read_text().splitlines()[0])["state"] == PENDING


def test_the_same_photo_under_two_names_is_two_outputs(tmp_path):
    manifest = Manifest(tmp_path)
    writer = manifest.writer()
    writer.write(DONE, "k", "same", "a.png")
    writer.close()
    assert ("same", "b.png") not in manifest.done("k")
    assert np.array_equal(np.array(sorted(manifest.done("k"))), np.array([("same", "a.png")]))


def test_an_impossible_actor_size_is_one_clear_error(ray_cluster, photos, tmp_path, capsys):
    command = enhance([str(photos)], tmp_path / "out", "--cluster", "auto", "--cluster-actor-cpus", "64")
    assert main(command) == 2
    assert "--cluster-actor-cpus 64: the largest node has 2 cores" in capsys.readouterr().err
