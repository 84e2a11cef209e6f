"""The measured choice of CPU runtime and precision (engine.runtime_choice), on real networks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from image_enhancer import runtimes
from image_enhancer.engine import runtime_choice
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.engine.precision import SHIPPED_PHOTOS, Difference, calibration_photo
from image_enhancer.engine.runtime_choice import Candidate, RuntimeTable, Timing, best
from image_enhancer.engine.tiling import DEFAULT_OVERLAP, plan_tiles
from image_enhancer.models.descriptor import LoadedModel
from image_enhancer.paths import HOME_ENV, user_home
from image_enhancer.runtimes.ncnn.runner import NcnnRunner

COMPACT = "realesr-animevideov3"


@pytest.fixture
def engine(model_store, tmp_path) -> Enhancer:
    engine = Enhancer(model_store, device="cpu")
    engine.runtime_table = RuntimeTable(tmp_path / runtime_choice.TABLE_FILE)
    return engine


def test_every_installed_runtime_is_timed_once_and_remembered(engine, model_store, monkeypatch):
    monkeypatch.setattr(runtime_choice, "BUSY_SHARE", 1.0)  # kept even if other work runs meanwhile
    loaded = model_store.get(COMPACT)
    timings = engine.runtime_table.timings(loaded, engine.candidate_factory(loaded), engine.threads)
    assert [t.candidate for t in timings] == runtime_choice.candidates(loaded.descriptor.architecture)
    assert timings[0].candidate == Candidate("pytorch", "fp32") and timings[0].mean_levels == 0
    assert {t.runtime for t in timings} == {r.name for r in runtimes.installed()}
    assert all(t.seconds_per_pixel > 0 and t.within() for t in timings)  # fp32 everywhere on this CPU
    assert all(t.work() >= 1.0 and t.core > 0 for t in timings)  # the context its windows compute twice
    written = engine.runtime_table.path.read_bytes()

    def never(_candidate: Candidate) -> object:
        raise AssertionError("measured again although the table knows this graph")

    assert engine.runtime_table.timings(loaded, never, engine.threads) == timings
    assert engine.runtime_table.path.read_bytes() == written
    # Two strengths of one pair share a graph, so they share the timings.
    first, second = model_store.get("ie-compact-x4-psnr"), model_store.get("ie-compact-x4-gan")
    assert runtime_choice.graph_key(first, 2) == runtime_choice.graph_key(second, 2)
    assert runtime_choice.graph_key(first, 2) != runtime_choice.graph_key(loaded, 2)
    assert runtime_choice.graph_key(first, 2) != runtime_choice.graph_key(first, 4)


def test_a_model_s_keys_are_derived_once_and_not_carried_to_a_copy(model_store, monkeypatch):
    """Every job asks for its network's keys; a digest over the weights is derived once per loaded
    model, and a copy with other weights (``dataclasses.replace``) derives its own."""
    derived = []
    monkeypatch.setattr(runtime_choice, "_graph_key", lambda loaded, threads: derived.append(loaded) or "k")
    stored = model_store.get(COMPACT)
    loaded = LoadedModel(stored.module, stored.descriptor)  # none of its keys derived yet
    assert runtime_choice.graph_key(loaded, 2) == runtime_choice.graph_key(loaded, 2) == "k"
    other = dataclasses.replace(loaded, module=model_store.get("ie-compact-x4-gan").module)
    runtime_choice.graph_key(other, 2)
    assert derived == [loaded, other]


def test_timings_taken_while_other_work_loads_the_cpu_are_not_kept(engine, model_store):
    """Runtimes slow down unequally when they share the cores, so a table timed under load would choose
    for good by what the load did: such timings serve this process only."""
    loaded = model_store.get(COMPACT)
    spin = [sys.executable, "-c", "while True: pass"]
    spinning = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 1)]
    try:
        busy = runtime_choice.OtherCpuUse()
        timings = engine.runtime_table.timings(loaded, engine.candidate_factory(loaded), engine.threads)
        measured_share = busy.share()
    finally:
        for process in spinning:
            process.kill()
            process.wait()
    assert measured_share > runtime_choice.BUSY_SHARE
    assert not engine.runtime_table.path.exists()  # nothing kept

    def never(_candidate: Candidate) -> object:
        raise AssertionError("measured again within the process that has timings")

    assert engine.runtime_table.timings(loaded, never, engine.threads) == timings  # this process uses them


def test_auto_runs_the_measured_winner(engine, model_store):
    """The table decides: told that ncnn is the fastest here, auto runs the job on ncnn."""
    if not runtimes.get("ncnn").available():
        pytest.skip("ncnn is not installed")
    loaded = model_store.get(COMPACT)
    key = runtime_choice.graph_key(loaded, engine.threads)
    engine.runtime_table.put(
        key, [Timing("pytorch", "fp32", 3e-6), Timing("openvino", "fp32", 2e-6), Timing("ncnn", "fp32", 1e-6)]
    )
    assert engine.choice(loaded) == Timing("ncnn", "fp32", 1e-6)
    result = engine.enhance(np.zeros((8, 8, 3), np.uint8), EnhanceOptions(model=COMPACT))
    assert result.shape == (32, 32, 3)
    assert any(isinstance(runner, NcnnRunner) for _, runner, _ in engine._runners.values())


def test_a_precision_outside_the_bound_is_not_taken_by_auto():
    timings = [
        Timing("pytorch", "fp32", 4e-6),
        Timing("openvino", "fp32", 3e-6),
        Timing("openvino", "bf16", 1e-6, mean_levels=0.9, max_levels=8, psnr_db=38.0),  # fast but off
        Timing("ncnn", "fp16", 2e-6, mean_levels=0.2, max_levels=3, psnr_db=45.0),
    ]
    assert best(timings, "auto").candidate == Candidate("ncnn", "fp16")
    assert best(timings, "fp32").candidate == Candidate("openvino", "fp32")
    assert best(timings, "bf16").candidate == Candidate("openvino", "bf16")  # asked for: taken


def test_a_reduced_precision_is_judged_on_its_worst_shipped_photo(engine, model_store):
    """A reduced precision's error depends on the photo (x4plus in bf16: 0.33 levels on the forest, 0.84
    on the evening glow; 1.06 on the soft forest, at 96² and more), so the window it was timed on alone
    would let auto take it where it errs most.
    PyTorch's bf16 (emulated where the CPU has none) stands for the reduced precision here."""
    loaded = model_store.get(COMPACT)
    make = engine.candidate_factory(loaded)
    reduced_candidate = Candidate("pytorch", "bf16")
    reference, reduced = make(runtime_choice.REFERENCE), make(reduced_candidate)
    timed_window = Difference(0.0, 0.0, float("inf"))
    ops = {runtime_choice.REFERENCE: (reference, timed_window), reduced_candidate: (reduced, timed_window)}
    runtime_choice._judge_on_every_photo(ops, reference, 64, loaded)
    assert ops[runtime_choice.REFERENCE][1] == timed_window  # fp32 is what the others are judged against
    photos = [torch.from_numpy(calibration_photo(name)) for name in SHIPPED_PHOTOS]
    # Judged on windows of at least JUDGE_MIN_SIDE, whatever the timing window (64 here).
    windows = [runtime_choice._centre(photo, runtime_choice.JUDGE_MIN_SIDE) for photo in photos]
    per_photo = [Difference.between(reduced(w).numpy(), reference(w).numpy()) for w in windows]
    judged = ops[reduced_candidate][1]
    assert judged == Difference.worst(per_photo) and judged.mean_levels > 0
    assert judged.mean_levels == max(d.mean_levels for d in per_photo) > min(d.mean_levels for d in per_photo)


def test_the_choice_counts_the_context_of_the_jobs_own_tiles():
    """Faster per pixel but with cores a quarter the size (x4plus on ncnn against OpenVINO on an AVX2
    EPYC): a 500² image fits OpenVINO's single window but needs 3×4 tiles on ncnn, over twice the
    work, so OpenVINO wins it, while on a large photo both pay for context and ncnn's pace wins."""
    small_cores = Timing("ncnn", "fp32", 155e-6, core=152, pad=32)
    large_cores = Timing("openvino", "fp32", 272e-6, core=536, pad=32)
    windows = plan_tiles(0, 0, 500, 500, 152, DEFAULT_OVERLAP, 32, widen=True)  # 3×4 of 195×236
    assert small_cores.work((500, 500)) == pytest.approx(
        sum(t.y.window_size * t.x.window_size for t in windows) / 500**2
    )
    assert small_cores.work((500, 500)) > 2
    assert large_cores.work((500, 500)) == 1.0  # one window, no context
    assert large_cores.work() == pytest.approx((600 / 536) ** 2)
    assert best([small_cores, large_cores], "fp32", (500, 500)).runtime == "openvino"
    assert best([small_cores, large_cores], "fp32", (4000, 3000)).runtime == "ncnn"
    assert Timing("pytorch", "fp32", 1e-6).work((5000, 5000)) == 1.0  # no core known: no context


def test_a_fast_network_is_timed_on_the_photo_mirrored_beyond_its_size():
    """A fast network's cost per pixel grows with the window (PyTorch more than OpenVINO), so it is
    timed on a window as large as a real job's: the shipped photo with its mirror images around it."""
    photo = torch.from_numpy(calibration_photo(runtime_choice.PHOTO))
    grown = runtime_choice._mirrored(photo, runtime_choice.MAX_SIDE)
    side = photo.shape[-1]
    assert min(grown.shape[-2:]) >= runtime_choice.MAX_SIDE > side
    assert torch.equal(grown[..., :side, :side], photo)
    assert torch.equal(grown[..., :side, side : 2 * side], photo.flip(-1))
    assert torch.equal(grown[..., side : 2 * side, :side], photo.flip(-2))


def test_a_damaged_table_is_measured_again(engine, model_store, monkeypatch):
    monkeypatch.setattr(runtime_choice, "BUSY_SHARE", 1.0)  # kept even if other work runs meanwhile
    engine.runtime_table.path.write_text("{not json" * 10)
    loaded = model_store.get(COMPACT)
    assert engine.choice(loaded).runtime in {r.name for r in runtimes.installed()}
    table = json.loads(engine.runtime_table.path.read_text())
    assert runtime_choice.graph_key(loaded, engine.threads) in table


def test_devices_benchmark_prints_the_table(tmp_path):
    # A fresh user folder for the table, with the installed models and converted networks linked in.
    for folder in ("weights", "openvino", "ncnn"):
        if (user_home() / folder).is_dir():
            (tmp_path / folder).symlink_to(user_home() / folder)
    env = {**os.environ, HOME_ENV: str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "image_enhancer", "devices", "--benchmark", "-m", COMPACT],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "AVX2" in run.stdout or "NEON" in run.stdout  # the CPU's features beside the figures
    lines = [line.split() for line in run.stdout.splitlines()]
    names = {r.name for r in runtimes.installed()}
    rows = [words for words in lines if len(words) >= 6 and words[0] in names]
    assert sum("<-" in row for row in rows) == 1
    assert (tmp_path / runtime_choice.TABLE_FILE).is_file()
