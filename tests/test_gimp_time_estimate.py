"""The dialog's time line (gimp_plugin/ai_enhance/time_estimate.py) against a real backend, without GIMP:
it asks the backend for the layers' own sizes in the background and says so meanwhile, it words the
answer, it says why when the backend cannot answer, and with a backend older than EstimateTime it falls
back to the model list's speed. What GIMP tells of the layers (channels, a varying alpha) is tested in
tests/test_gimp_dialog_logic.py."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from image_enhancer.request import EnhanceOptions
from image_enhancer.wire import ModelInfo
from tests.conftest import FAST_MODEL, engine_held

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin" / "ai_enhance"))
import settings  # noqa: E402
import time_estimate  # noqa: E402
from newest import NewestOnly, Superseded  # noqa: E402
from time_estimate import EstimateJob, LayerWork, TimeEstimates  # noqa: E402

MODEL = ModelInfo(FAST_MODEL, "SRVGGNetCompact", 4, True, False)
LAYERS = (LayerWork(400, 300, 3, False), LayerWork(200, 150, 4, True))
JOB = EstimateJob(LAYERS, EnhanceOptions(FAST_MODEL, 2.0))


def _never() -> bool:
    return False


def test_the_line_says_measuring_then_the_backends_answer(grpc_server) -> None:  # noqa: ANN001
    asked: list[EstimateJob] = []
    estimates = TimeEstimates(3, "cpu", asked.append)
    assert estimates.line(JOB, MODEL) == "Time: being measured on this CPU…"
    assert estimates.line(JOB, MODEL) == "Time: being measured on this CPU…" and asked == [JOB]  # once
    answer = time_estimate.ask_backend(grpc_server.address, JOB, _never)
    assert answer.job == JOB and answer.seconds is not None and answer.seconds > 0, answer
    estimates.answered(answer)
    assert estimates.line(JOB, MODEL) == settings.time_text(answer.seconds, "cpu")
    assert estimates.line(JOB, MODEL).startswith("Time: ") and "on this CPU." in estimates.line(JOB, MODEL)


def test_the_estimate_runs_in_the_background_and_only_the_newest_counts(grpc_server) -> None:  # noqa: ANN001
    delivered: list[object] = []
    arrived = threading.Event()

    def deliver(outcome: object) -> None:
        delivered.append(outcome)
        arrived.set()

    runner = NewestOnly(lambda job, cancelled: time_estimate.ask_backend(grpc_server.address, job, cancelled),
                        deliver, "The time estimate")  # fmt: skip
    estimates = TimeEstimates(3, "cpu", runner.request)
    older = EstimateJob(JOB.layers, EnhanceOptions(FAST_MODEL, 3.0))
    estimates.line(older, MODEL)
    estimates.line(JOB, MODEL)  # supersedes the older question
    assert arrived.wait(120)
    runner.stop()
    assert all(answer.job == JOB for answer in delivered), delivered
    estimates.answered(delivered[-1])
    assert "being measured" not in estimates.line(JOB, MODEL)


def test_a_backend_that_cannot_answer_is_said_so() -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    answer = time_estimate.ask_backend(nobody, JOB, _never)
    assert answer.seconds is None and answer.problem
    estimates = TimeEstimates(3, "cpu", lambda job: None)
    estimates.answered(answer)
    assert estimates.line(JOB, MODEL) == f"Time: unknown ({answer.problem})"


def test_a_superseded_question_stops_before_asking_again(grpc_server) -> None:  # noqa: ANN001
    with pytest.raises(Superseded):
        time_estimate.ask_backend(grpc_server.address, JOB, lambda: True)


def test_an_older_backend_is_estimated_from_the_model_lists_speed() -> None:
    measured = ModelInfo(FAST_MODEL, "SRVGGNetCompact", 4, True, False, output_pixels_per_second=1e6)
    asked: list[EstimateJob] = []
    line = TimeEstimates(2, "cpu", asked.append).line(JOB, measured)
    sizes = [(layer.width, layer.height) for layer in JOB.layers]
    assert line == settings.estimate_text(settings.network_jobs(sizes, measured), measured, "cpu")
    assert not asked


def test_closing_the_dialog_drops_a_question_waiting_behind_a_job(grpc_server) -> None:  # noqa: ANN001
    """OK closes the dialog while the estimate waits behind the preview's job: the question is withdrawn
    within a poll, so the backend never computes it ahead of OK's own job, and nothing is delivered."""
    import time

    delivered: list[object] = []
    with engine_held(grpc_server.address) as job:
        ask = lambda job, cancelled: time_estimate.ask_backend(grpc_server.address, job, cancelled)  # noqa: E731
        runner = NewestOnly(ask, delivered.append, "The time estimate")
        runner.request(EstimateJob(JOB.layers, EnhanceOptions(FAST_MODEL, 3.5)))  # not answered yet
        time.sleep(0.3)
        stopped = time.monotonic()
        runner.stop(timeout=5.0)
        waited = time.monotonic() - stopped
        assert waited < 1.0 and job.is_alive(), (waited, job.is_alive())
    assert delivered == []
