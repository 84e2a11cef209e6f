"""The plug-in's progress texts (gimp_plugin/ai_enhance/progress_text.py) without GIMP: the stage named
truthfully, the percentage, the time spent and a smoothed estimate of the time left."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from image_enhancer.client.core import ProgressEvent

PLUGIN = Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"
_spec = importlib.util.spec_from_file_location("ai_enhance_progress_text", PLUGIN / "progress_text.py")
progress_text = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = progress_text  # dataclasses look their module up there
_spec.loader.exec_module(progress_text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (7.9, "0:07"), (65, "1:05"), (3723, "1:02:03"), (-3, "0:00")],
)
def test_elapsed_text(seconds: float, text: str) -> None:
    assert progress_text.elapsed_text(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2, "a few seconds left"),
        (38, "about 40 s left"),
        (59, "about 60 s left"),
        (61, "about 1 min left"),
        (150, "about 2 min left"),  # 2.5 rounds to the even 2
        (3600 + 1800, "about 1 h 30 min left"),
    ],
)
def test_remaining_text(seconds: float, text: str) -> None:
    assert progress_text.remaining_text(seconds) == text


def test_eta_is_the_time_per_fraction_and_smoothed() -> None:
    eta = progress_text.Eta()
    assert eta.update(0.0, 100.0) is None  # nothing done yet: no guess
    assert eta.update(0.01, 101.0) is None  # too little done to say
    assert eta.update(0.25, 110.0) == pytest.approx(30.0)  # 10 s for a quarter: 30 s to go
    # Steady work counts down; a burst of speed moves the estimate only part of the way.
    assert eta.update(0.5, 120.0) == pytest.approx(20.0)
    steady = 40.0
    burst = eta.update(0.9, 121.0)  # as if 0.4 had taken 1 s: the raw estimate would be 26.7 s in all
    raw_total = 21.0 / 0.9
    assert raw_total - 21.0 < burst < steady - 21.0
    assert eta.update(1.0, 125.0) == 0.0


def test_eta_starts_again_when_the_work_starts_again() -> None:
    eta = progress_text.Eta()
    eta.update(0.5, 10.0)
    eta.update(0.8, 20.0)
    assert eta.update(0.1, 30.0) is None  # a fraction going back is new work: its clock starts now
    assert eta.update(0.5, 34.0) == pytest.approx(4.0)


def _event(stage: str, done: int = 0, total: int = 0, queue_position: int = 0) -> ProgressEvent:
    return ProgressEvent(stage, done, total, queue_position)


def test_stage_texts() -> None:
    text = progress_text.ProgressText(began=0.0)
    assert text(_event("queued", queue_position=1), now=0.5) == (
        "Waiting for the AI backend (1 job ahead)",
        None,
    )
    assert text(_event("queued", queue_position=3), now=0.5)[0] == "Waiting for the AI backend (3 jobs ahead)"
    assert text(_event("loading model", 0, 1), now=1.0) == ("Loading the model", None)
    assert text(_event("loading model"), now=1.0) == ("Loading the model", None)
    assert text(_event("loading model", 1, 1), now=2.0) == ("Model loaded, starting", None)
    assert text(_event("enhancing", 0, 1000), now=2.0) == ("Enhancing 0 % \u00b7 0:02", 0.0)
    assert text(_event("enhancing", 10, 1000), now=3.0) == ("Enhancing 1 % \u00b7 0:03", 0.01)
    assert text(_event("enhancing", 370, 1000), now=42.0) == (
        "Enhancing 37 % \u00b7 0:42, about 1 min left",
        0.37,
    )
    assert text(_event("enhancing", 1000, 1000), now=110.0) == (
        "Enhancing 100 % \u00b7 1:50, a few seconds left",
        1.0,
    )
    assert text(_event("finishing", 1, 1), now=111.0) == ("Finishing", None)
