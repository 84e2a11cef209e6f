"""What one enhancement request may ask, and the limits on it: torch-free, so the command line, the
server's validation and the engine all check a request the same way without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SCALE = 1.0
MAX_SCALE = 8.0
#: Tile core sizes in input pixels (0 = automatic).
MIN_TILE = 16
MAX_TILE = 8192
ALPHA_MODES = ("model", "bicubic")
#: The face pass's blend of restored and unrestored faces when a request does not say.
DEFAULT_FACE_STRENGTH = 0.8


@dataclass(frozen=True)
class EnhanceOptions:
    """Everything a request can ask of the engine.

    model: name known to the store ("" = the default model). scale: output/input size ratio in
    [1, 8] (None = the model's own). strength: faithful↔sharp network interpolation weight in [0, 1]
    (None = the model as it is). tile: tile core size in input pixels (0 = chosen from free memory).
    alpha_mode: how transparency is upscaled, "model" or "bicubic". colour_fidelity: keep the result's
    low-frequency colour matched to the input. auto_contrast: contrast/colour improvement strength in
    [0, 1]. linear: the samples are linear light (converted to sRGB for the network and back), for
    float layers in a linear working space.
    """

    model: str = ""
    scale: float | None = None
    strength: float | None = None
    tile: int = 0
    alpha_mode: str = "model"
    colour_fidelity: bool = False
    auto_contrast: float = 0.0
    linear: bool = False
    # The face pass (after the enhancement): faces on/off, the blend of restored faces in [0, 1], and
    # the face model ("" = the default one). faces_only: the face pass instead of the enhancement (the
    # result keeps the input's size; `model` is not used).
    faces: bool = False
    face_strength: float = DEFAULT_FACE_STRENGTH
    face_model: str = ""
    faces_only: bool = False

    def validate(self) -> None:
        """Raise ValueError with a human message for any option out of range."""
        if not isinstance(self.model, str):
            raise ValueError(f"the model must be named by a string, got {shorten(self.model)}")
        if self.scale is not None and not (MIN_SCALE <= self.scale <= MAX_SCALE):  # NaN fails too
            raise ValueError(f"scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, got {self.scale}")
        if self.strength is not None:
            check_strength(self.strength)
        if self.tile != 0 and not (MIN_TILE <= self.tile <= MAX_TILE):
            raise ValueError(
                f"tile size must be 0 (automatic) or between {MIN_TILE} and {MAX_TILE}, got {self.tile}"
            )
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"unknown alpha mode {shorten(self.alpha_mode)}; expected 'model' or 'bicubic'")
        if not (0.0 <= self.auto_contrast <= 1.0):
            raise ValueError(f"auto_contrast must be between 0 and 1, got {self.auto_contrast}")
        if not (0.0 <= self.face_strength <= 1.0):
            raise ValueError(f"face strength must be between 0 and 1, got {self.face_strength}")
        if not isinstance(self.face_model, str):
            raise ValueError(f"the face model must be named by a string, got {shorten(self.face_model)}")
        if self.faces_only and not self.faces:
            raise ValueError("faces only needs the face pass: ask for faces too")
        if self.faces_only and self.scale not in (None, 1.0):
            raise ValueError(f"faces only keeps the image's size: the scale must be 1, got {self.scale}")


def check_strength(strength: float) -> None:
    """The faithful↔sharp blend weight must lie in [0, 1] (NaN fails too)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")


#: How much of a client-supplied string an error message repeats.
ECHO_LIMIT = 80


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)` cut to about `limit` characters, so that errors never echo unbounded input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} characters)"
