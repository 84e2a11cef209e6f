"""The plug-in's dialog in the real GIMP 3.0 and 3.2, on a virtual display, against a real backend: opened
through the plug-in's own `run` as Filters > Enhance > AI Enhance opens it, and worked as a person would
(tests/gimp/drive_dialog.py): the preview comes back, follows the map and the zoom, and a model switched
to x4plus and back, then OK, gives the layer of the model chosen. The sequence that once ended in
"Plug-in crashed" (x4plus, back, wait, OK) is repeated, as is OK pressed while a preview still computes;
no run may fail, log an error or leave a preview thread running.

Needs root (chroot). Outside CI the tests skip when that is impossible; under CI=true they fail.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gimp"))
import test_gimp_e2e  # noqa: E402
from chroot_gimp import ChrootGimp, build_chroot, unavailable, virtual_display  # noqa: E402

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

SLOW_MODEL = "realesrgan-x4plus"  # seconds per preview on a CPU: still running when the person moves on
PHOTO = REPO / "tests" / "data" / "forest_256.png"
PREVIEW = {"wait": "preview"}
TO_X4PLUS, BACK = {"model": SLOW_MODEL}, {"model": ""}  # "": the model the dialog opened with

# The real GIMPs and the backend they talk to, shared with the end-to-end tests (one of each per run).
gimp_version = test_gimp_e2e.gimp_version
gimp_root = test_gimp_e2e.gimp_root
backend_address = test_gimp_e2e.backend_address
gimp = test_gimp_e2e.gimp

SCENARIOS = {
    # The sequence: to x4plus, back, wait 8 s, OK.
    "switch_back_then_ok": {
        "steps": [PREVIEW, TO_X4PLUS, {"sleep": 2}, BACK, PREVIEW, {"sleep": 8}, {"respond": "ok"}],
        "repeat": 2,
        "arguments": {"scale": "x2"},
    },
    # OK while the preview of the model switched back to has only just been asked for.
    "ok_while_the_preview_computes": {
        "steps": [PREVIEW, TO_X4PLUS, {"sleep": 1.5}, BACK, {"sleep": 0.45}, {"respond": "ok"}],
        "repeat": 2,
        "arguments": {"scale": "x2"},
    },
    # Aim with the map, zoom to 2:1, then cancel while an x4plus preview computes.
    "aim_zoom_cancel": {
        "steps": [PREVIEW, {"map": [8, 8]}, PREVIEW, {"zoom": 2}, PREVIEW, TO_X4PLUS, {"sleep": 1.5},
                  {"respond": "cancel"}],
        "arguments": {"scale": "x4"},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def worked(gimp: ChrootGimp, gimp_version: str) -> Iterator[dict]:
    """Every scenario worked through in one GIMP session."""
    try:
        root = build_chroot(gimp_version, "--with-xvfb")  # adds the X server to the same chroot
    except RuntimeError as error:
        unavailable(str(error))
    assert root == gimp.root
    with virtual_display(root) as display:
        result = gimp.drive_dialog("dialog", PHOTO, display, scenarios=SCENARIOS)
    assert result["returncode"] == 0, result["output"][-4000:]
    yield result


def _runs(worked: dict, name: str) -> list[dict]:
    runs = worked[name]
    assert len(runs) == SCENARIOS[name].get("repeat", 1)
    for run in runs:
        assert "problem" not in run, run
        assert run["threads_left"] == [], run  # no preview or estimate worker outlived its dialog
    return runs


def test_switching_to_x4plus_and_back_then_ok_gives_the_chosen_models_layer(worked: dict) -> None:
    for run in _runs(worked, "switch_back_then_ok"):
        assert run["status"] == "success", run
        assert "(AI x2, " in run["new_layer"] and SLOW_MODEL not in run["new_layer"], run
        assert run["selected"] == [run["new_layer"]]  # ready for the next run
        assert len(run["previews"]) == 2 and run["summary"].startswith("Result: 512 × 512 px"), run


def test_ok_while_a_preview_computes_runs_the_job_and_leaves_nothing_behind(worked: dict) -> None:
    for run in _runs(worked, "ok_while_the_preview_computes"):
        assert run["status"] == "success", run
        assert SLOW_MODEL not in run["new_layer"], run


def test_the_preview_follows_the_map_and_the_zoom_and_cancel_changes_nothing(worked: dict) -> None:
    (run,) = _runs(worked, "aim_zoom_cancel")
    first, aimed, zoomed = run["previews"]
    assert "the most detailed area" in first and "at 1:1" in first, first
    assert "the place chosen" in aimed and "at 1:1" in aimed, aimed
    assert "the place chosen" in zoomed and "at 2:1" in zoomed, zoomed
    assert run["status"] == "cancel", run
    assert len(run["layers"]) == 1  # the image as it was


def test_no_run_logged_an_error_and_gimp_had_nothing_to_say_about_the_dialog(worked: dict) -> None:
    assert worked["error_log"].strip() == ""
    output = worked["output"]
    assert "Traceback" not in output and "crashed" not in output, output[-4000:]
    assert "duplicate mnemonic" not in output, output[-4000:]  # every Alt+letter reaches one control
