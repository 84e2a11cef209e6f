"""The plug-in's options as plain values, independent of GIMP, and the request they make.

GIMP keeps them in the procedure's config (which also remembers the last values); `run` copies them
into `Settings` once, so the rest of the plug-in never reads GObject properties. `Settings.options`
makes the request (`image_enhancer.request.EnhanceOptions`, checked by the same `validate()` as the
server runs); the client turns it into the wire's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from geometry import scaled_size

from image_enhancer.request import DEFAULT_FACE_STRENGTH, EnhanceOptions
from image_enhancer.wire import FACES_PROTOCOL_VERSION, ModelInfo

# Choice ids of the "scale" argument; "custom" takes the factor from "custom-scale".
SCALE_CHOICES = {"x1": 1.0, "x2": 2.0, "x4": 4.0, "custom": None}
# What a face model is for, in the catalogue.
FACE_PURPOSE = "restores faces; used by Restore faces"


@dataclass(frozen=True)
class Settings:
    model: str = ""  # empty: the server's default model
    scale_choice: str = "x4"
    custom_scale: float = 3.0
    strength: float = 1.0  # used only for models with a PSNR/GAN pair
    colour_fidelity: bool = False
    auto_contrast: float = 0.0
    alpha_mode: str = "model"
    tile: int = 0  # 0: the server picks
    server: str = ""  # empty: the address the installer recorded
    faces: bool = False  # restore faces after the enhancement
    face_strength: float = DEFAULT_FACE_STRENGTH
    face_model: str = ""  # empty: the server's default face model
    faces_only: bool = False  # restore faces without enhancing (at ×1)

    @classmethod
    def from_config(cls, config: object) -> Settings:
        """The values of GIMP's procedure config (anything with `get_property`)."""
        get = config.get_property  # type: ignore[attr-defined]
        return cls(
            model=get("model") or "",
            scale_choice=get("scale"),
            custom_scale=get("custom-scale"),
            strength=get("strength"),
            colour_fidelity=get("colour-fidelity"),
            auto_contrast=get("auto-contrast"),
            alpha_mode=get("alpha-mode"),
            tile=get("tile-size"),
            server=(get("server") or "").strip(),
            faces=get("restore-faces"),
            face_strength=get("face-strength"),
            face_model=(get("face-model") or "").strip(),
            faces_only=get("faces-only"),
        )

    def options(self, model: ModelInfo) -> EnhanceOptions:
        """The request's options for `model` (strength only where the model has a pair); ValueError
        for any value out of range."""
        options = EnhanceOptions(
            model=model.name,
            scale=self.scale,
            strength=self.strength if model.has_strength else None,
            tile=self.tile,
            colour_fidelity=self.colour_fidelity,
            auto_contrast=self.auto_contrast,
            alpha_mode=self.alpha_mode,
            faces=self.faces or self.faces_only,
            face_strength=self.face_strength,
            face_model=self.face_model,
            faces_only=self.faces_only,
        )
        options.validate()
        return options

    @property
    def scale(self) -> float:
        """The output scale factor the choice stands for (1 for faces only)."""
        if self.faces_only:
            return 1.0
        if self.scale_choice not in SCALE_CHOICES:
            raise ValueError(f"unknown scale {self.scale_choice!r}; choose from {', '.join(SCALE_CHOICES)}")
        factor = SCALE_CHOICES[self.scale_choice]
        if factor is None:
            factor = self.custom_scale
        EnhanceOptions(scale=factor).validate()
        return factor


# --- what the dialog tells a person (plain text, no GIMP) ------------------------------------------------

_DEVICE_WORDS = {"cpu": "this CPU", "mps": "this Mac's GPU"}


def installed_models(models: list[ModelInfo]) -> list[ModelInfo]:
    return [model for model in models if model.installed]


def _blended_elsewhere(model: ModelInfo, installed: set[str]) -> bool:
    """A member of a pair whose own entry is installed: the Detail control of that entry reaches it."""
    return bool(model.pair_member_of) and model.pair_member_of in installed


def model_entries(models: list[ModelInfo]) -> list[ModelInfo]:
    """The dialog's model list: the installed models, one entry per faithful/sharp pair (its Detail
    control picks the blend; the pair's members are not listed again)."""
    installed = {model.name for model in installed_models(models)}
    return [m for m in installed_models(models) if not _blended_elsewhere(m, installed)]


def catalogue(models: list[ModelInfo], face_models: Sequence[ModelInfo] = ()) -> list[ModelInfo]:
    """What "Get more models…" offers: the backend's models that it can install and that are not
    installed, one entry per pair (installing a pair's entry brings its other member too), then its
    face models likewise."""
    offered = {m.name for m in models if m.installable}
    return [
        m
        for m in models
        if m.installable and not m.installed and not (m.pair_member_of and m.pair_member_of in offered)
    ] + [m for m in face_models if m.installable and not m.installed]


def size_text(size: int) -> str:
    """A download size for people: "2.5 MB", "64 MB"; "size unknown" for 0."""
    if size <= 0:
        return "size unknown"
    megabytes = size / 1e6
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:.0f} MB"


def catalogue_text(model: ModelInfo, models: list[ModelInfo], face_models: Sequence[ModelInfo] = ()) -> str:
    """One line of the catalogue: what the model is for, its download size and licence."""
    if model in face_models:
        return (
            f"{model_label(model)} ({FACE_PURPOSE}): {size_text(model.download_bytes)}, "
            f"licence {model.license or 'unknown'}"
        )
    members = [m for m in models if m.pair_member_of == model.name]
    size = model.download_bytes + sum(m.download_bytes for m in members if not m.installed)
    pair = " (with a faithful ↔ sharp Detail control)" if members else ""
    return f"{model_label(model)}{pair}: {size_text(size)}, licence {model.license or 'unknown'}"


def initial_model(models: list[ModelInfo], remembered: str, suggested: str) -> str:
    """The model the dialog opens with: the person's last choice, else the one the backend suggests for
    its device, else its default; always one the list shows ("" when none is installed). A pair's member
    stands for its pair's entry."""
    names = [model.name for model in model_entries(models)]
    members = {model.name: model.pair_member_of for model in models if model.pair_member_of}
    defaults = [model.name for model in models if model.is_default]
    for candidate in (remembered, suggested, *defaults):
        candidate = candidate if candidate in names else members.get(candidate, "")
        if candidate in names:
            return candidate
    return names[0] if names else ""


def model_label(model: ModelInfo) -> str:
    """The plain description the backend gives ("Photo — fast, faithful"), else the name."""
    return model.description or model.name


def more_models_hint(models: list[ModelInfo], face_models: Sequence[ModelInfo] = ()) -> str:
    missing = len(catalogue(models, face_models))
    if not missing:
        return ""
    return f"{missing} more model{'s' if missing > 1 else ''} can be installed: Get more models…"


def face_model_names(face_models: Sequence[ModelInfo]) -> list[str]:
    """What the Face model list offers: the installed face models, the backend's default first."""
    return [model.name for model in face_models if model.installed]


def initial_face_model(names: list[str], remembered: str) -> str:
    """The face model the list shows: the person's last choice while it is installed, else the backend's
    default (the first); "" when there is none."""
    return remembered if remembered in names else (names[0] if names else "")


def face_model_note(protocol_version: int, face_models: Sequence[ModelInfo]) -> str:
    """Why Restore faces cannot work with this backend and what to do, or "" when it can."""
    if protocol_version < FACES_PROTOCOL_VERSION:
        return (
            "Restore faces: this backend is too old for face restoration; update it (run the "
            "installer again)."
        )
    if face_model_names(face_models):
        return ""
    if any(model.installable for model in face_models):
        return "Restore faces: the backend has no face model yet; Get more models… installs one."
    return (
        "Restore faces: the backend has no face model. Install one with  python install.py --models "
        "gfpgan-1.4"
    )


def result_label(options: EnhanceOptions, faces: tuple[int, int] | None = None) -> str:
    """What made a result, for its layer's name: "AI x4, realesrgan-x4plus, detail 80 %", with the face
    pass and, when known, its (restored, found) count: "AI x1, …, faces 80 %: 2 restored"."""
    if options.faces_only:
        label = "AI faces"
    else:
        label = f"AI x{options.scale:g}, {options.model}"
        if options.strength is not None:
            label += f", detail {round(options.strength * 100)} %"
    if options.faces:
        label += f"{'' if options.faces_only else ', faces'} {round(options.face_strength * 100)} %"
        if faces is not None:
            label += f": {faces[0]} restored" if faces[1] else ": no face found"
    return label


def device_words(device: str) -> str:
    """ "cpu" → "this CPU", "cuda:0" → "this GPU"."""
    return _DEVICE_WORDS.get(device, "this GPU")


def duration_text(seconds: float) -> str:
    if seconds < 5:
        return "a few seconds"
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    return f"about {round(seconds / 60)} min"


def network_jobs(sizes: list[tuple[int, int]], model: ModelInfo) -> list[int]:
    """The pixels the network makes for each layer of these sizes: it works at its own scale whatever
    scale is asked for (×3 from a ×4 model costs what ×4 costs), which is how the backend times it."""
    return [width * height * model.scale**2 for width, height in sizes]


def estimate_text(jobs: list[int], model: ModelInfo, device: str) -> str:
    """How long the backend will take for jobs of these network pixels (one per layer: input pixels ×
    the model's scale²), from the speed it measured for the model on its device."""
    seconds = estimate_seconds(jobs, model)
    if seconds is None:
        return f"Time: not yet measured for this model on {device_words(device)} (the first run measures it)."
    return time_text(seconds, device)


def time_text(seconds: float, device: str) -> str:
    """The dialog's time line: "Time: about 3 min on this CPU."."""
    return f"Time: {duration_text(seconds)} on {device_words(device)}."


def estimate_seconds(jobs: list[int], model: ModelInfo) -> float | None:
    """The seconds ``estimate_text`` words; None before the backend has measured the model."""
    if model.output_pixels_per_second <= 0:
        return None
    return sum(model.job_fixed_seconds + pixels / model.output_pixels_per_second for pixels in jobs)


def result_text(image_size: tuple[int, int], scale: float, selection: bool) -> str:
    """What happens to the image: its new size, and that everything grows with it."""
    if scale == 1.0:
        where = "only the selection is enhanced (blended through a layer mask)" if selection else "same size"
        return f"Result: a new layer above the original; {where}."
    width, height = scaled_size(*image_size, scale)
    return (
        f"Result: {width} × {height} px. The canvas and every layer grow ×{scale:g}; the enhanced layer "
        "goes above its original."
    )
