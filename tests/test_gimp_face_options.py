"""The plug-in's face options without GIMP: what the dialog's values ask of the backend (faces, their
strength and model, faces only at ×1), the result layer's name, and the progress texts of the face
pass. The real-GIMP side is tests/test_gimp_faces.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from image_enhancer import wire
from image_enhancer.client.core import ProgressEvent
from image_enhancer.request import EnhanceOptions
from image_enhancer.wire import ImageInfo, ModelInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"))
import progress_text  # noqa: E402
import settings  # noqa: E402

MODEL = ModelInfo(name="m", architecture="SRVGGNetCompact", scale=4, installed=True, has_strength=False)


def test_restore_faces_reaches_the_request_and_the_wire() -> None:
    chosen = settings.Settings(scale_choice="x2", faces=True, face_strength=0.6, face_model="gfpgan-1.4")
    options = chosen.options(MODEL)
    assert (options.faces, options.face_strength, options.face_model, options.faces_only) == (
        True, 0.6, "gfpgan-1.4", False)
    back = wire.request_options(wire.options_message(options), ImageInfo(8, 8, 3, "u8"))
    assert back == options
    assert not settings.Settings().options(MODEL).faces  # off unless asked for


def test_a_face_request_is_not_sent_to_a_backend_too_old_for_it() -> None:
    """A protocol 1 backend would ignore the faces: the client refuses to send them (core.Client's
    check_supported, decided by this function), and the dialog says to update the backend."""
    for chosen in (settings.Settings(faces=True), settings.Settings(faces_only=True)):
        problem = wire.protocol_problem(chosen.options(MODEL), 1)
        assert problem is not None and "too old for face restoration" in problem
        assert wire.protocol_problem(chosen.options(MODEL), wire.PROTOCOL_VERSION) is None
    assert wire.protocol_problem(settings.Settings().options(MODEL), 1) is None  # no faces: any backend
    assert "update it" in settings.face_model_note(1, [])


def test_faces_only_is_always_x1_and_implies_faces() -> None:
    chosen = settings.Settings(scale_choice="x4", faces_only=True)
    assert chosen.scale == 1.0
    options = chosen.options(MODEL)
    assert options.faces and options.faces_only and options.scale == 1.0
    back = wire.request_options(wire.options_message(options), ImageInfo(8, 8, 4, "u16"))
    assert back.faces_only and back.face_strength == options.face_strength


def test_faces_only_at_another_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="scale must be 1"):
        EnhanceOptions(faces=True, faces_only=True, scale=2.0).validate()
    with pytest.raises(ValueError, match="faces only needs the face pass"):
        EnhanceOptions(faces_only=True).validate()


@pytest.mark.parametrize(
    ("options", "faces", "label"),
    [
        (EnhanceOptions(model="m", scale=2.0, faces=True, face_strength=0.8), None, "AI x2, m, faces 80 %"),
        (EnhanceOptions(model="m", scale=1.0, faces=True, face_strength=1.0), (2, 3),
         "AI x1, m, faces 100 %: 2 restored"),
        (EnhanceOptions(model="m", scale=1.0, faces=True), (0, 0), "AI x1, m, faces 80 %: no face found"),
        (EnhanceOptions(scale=1.0, faces=True, faces_only=True, face_strength=0.5), (1, 1),
         "AI faces 50 %: 1 restored"),
        (EnhanceOptions(model="m", scale=4.0), (1, 1), "AI x4, m"),  # no face pass asked: no count
    ],
)
def test_the_result_layer_names_the_face_pass(options, faces, label) -> None:
    assert settings.result_label(options, faces) == label


def test_face_pass_progress_texts() -> None:
    text = progress_text.ProgressText(began=0.0)
    assert text(ProgressEvent("restoring faces", 1, 4), now=1.0) == ("Restoring faces (1 of 4 done)", 0.25)
    assert text(ProgressEvent("faces restored", 2, 3), now=2.0) == (
        "Restored 2 of 3 faces (the others are too small, or too many to restore)", 1.0)
    assert text(ProgressEvent("faces restored", 1, 1), now=2.0) == ("Restored 1 of 1 face", 1.0)
    found_none = text(ProgressEvent("faces restored", 0, 0), now=2.0)[0]
    assert found_none.startswith("No face found")
