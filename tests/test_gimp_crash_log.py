"""No silent crash (gimp_plugin/ai_enhance/crash_log.py, newest.NewestOnly.stop), without GIMP: a
caught failure, an exception escaping a callback or a thread, and a process dying of a signal all leave
their Python stacks in the log; a stopped preview runner neither delivers nor keeps what it delivered to.
The same in the real GIMP: tests/test_gimp_layer_state.py."""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys
import threading
import weakref
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"
sys.path.insert(0, str(PLUGIN))  # for the plug-in modules' own imports of each other
_spec = importlib.util.spec_from_file_location("ai_enhance_crash_log", PLUGIN / "crash_log.py")
crash_log = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_log)
import newest  # noqa: E402
import preview  # noqa: E402


def _fail() -> None:
    raise RuntimeError("the grid is empty")


def test_a_caught_failure_is_logged_with_its_traceback_and_named_with_the_path(tmp_path: Path) -> None:
    log = crash_log.log_path(tmp_path / "GIMP" / "3.0")
    try:
        _fail()
    except RuntimeError as error:
        crash_log.record(log, error, "run")
        text = crash_log.message(log, error)
    assert (
        text == f"AI Enhance failed unexpectedly (RuntimeError: the grid is empty). The details are in {log}."
    )
    written = log.read_text()
    assert "run (thread MainThread)" in written
    assert "in _fail" in written and "RuntimeError: the grid is empty" in written


def test_the_log_keeps_its_newest_part(tmp_path: Path) -> None:
    log = tmp_path / crash_log.LOG_NAME
    log.write_text("old line\n" * (crash_log.MAX_BYTES // 9 + 10))
    crash_log.record(log, ValueError("newest"))
    assert log.stat().st_size < crash_log.MAX_BYTES
    assert log.read_text().rstrip().endswith("ValueError: newest")


def test_uncaught_exceptions_are_logged_and_told_on_the_main_thread_only(tmp_path: Path) -> None:
    log = tmp_path / crash_log.LOG_NAME
    told: list[str] = []
    hooks = sys.excepthook, threading.excepthook
    try:
        crash_log.install(log, told.append)
        try:
            _fail()
        except RuntimeError:
            sys.excepthook(*sys.exc_info())  # what PyGObject does with an exception from a GTK callback
        worker = threading.Thread(target=lambda: [][1], name="preview-worker")
        worker.start()
        worker.join()
    finally:
        sys.excepthook, threading.excepthook = hooks
    assert told == [crash_log.message(log, RuntimeError("the grid is empty"))]
    written = log.read_text()
    assert "uncaught in a callback (thread MainThread)" in written
    assert "uncaught in thread preview-worker" in written and "IndexError" in written


def test_a_process_dying_of_a_signal_leaves_every_threads_stack_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / crash_log.LOG_NAME
    code = f"""
import sys, threading, time, faulthandler
sys.path.insert(0, {str(PLUGIN)!r})
import crash_log
crash_log.install(crash_log.log_path(__import__("pathlib").Path({str(tmp_path)!r})), print)
def waiting_for_the_backend():
    time.sleep(60)
threading.Thread(target=waiting_for_the_backend, daemon=True).start()
time.sleep(0.2)
faulthandler._sigsegv()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    written = log.read_text()
    assert "Fatal Python error: Segmentation fault" in written
    assert "in waiting_for_the_backend" in written  # the other thread's stack too


def test_a_stopped_runner_delivers_nothing_and_lets_go_of_its_receiver() -> None:
    release, started = threading.Event(), threading.Event()

    def slow(job: preview.PreviewJob, cancelled) -> preview.PreviewResult:  # noqa: ANN001
        started.set()
        release.wait(30)  # a backend that sends no progress for a while: the cancel is not seen yet
        return preview.PreviewResult(job, job.image, job.data)

    class Receiver:  # stands for the dialog's panel, whose widgets must not end on the worker's thread
        def __init__(self) -> None:
            self.got: list[object] = []

        def deliver(self, outcome: object) -> None:
            self.got.append(outcome)

    receiver = Receiver()
    alive = weakref.ref(receiver)
    runner = newest.NewestOnly(slow, receiver.deliver, "The preview")
    info = preview.ImageInfo(1, 1, 3, "u8")
    crop = preview.plan_crop(1, 1, 0, 0, 2.0)
    runner.request(preview.PreviewJob(b"\0\0\0", info, preview.EnhanceOptions(model="m", scale=2.0), crop))
    assert started.wait(10)
    runner.stop(timeout=0.1)  # the dialog closes while the job still runs
    got = receiver.got
    del receiver
    gc.collect()
    assert alive() is None  # the worker, still running, holds nothing of the dialog
    release.set()
    worker = runner._worker
    if worker is not None:
        worker.join(10)
    assert got == []
