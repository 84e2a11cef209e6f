"""The interactive dialog: GIMP's own procedure dialog, a model list filled from the backend, a line
that says before OK what will happen to the image and how long it will take, and a preview."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
import filtered  # noqa: E402
import layer_io  # noqa: E402
import placement  # noqa: E402
import settings  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gimp, GimpUi, GLib, Gtk  # noqa: E402
from model_chooser import FaceModelChoice, ModelChooser  # noqa: E402
from newest import NewestOnly  # noqa: E402
from preview_panel import PreviewPanel  # noqa: E402
from time_estimate import Answer, EstimateJob, LayerWork, TimeEstimates, ask_backend  # noqa: E402

from image_enhancer.wire import ModelInfo, ServerInfo  # noqa: E402

STRENGTH_TOOLTIP = (
    "0 %: faithful — smooth, nothing invented.  100 %: sharp — crisp detail and texture the model invents."
)
FACE_STRENGTH_TOOLTIP = "0 %: faces as the enhancement made them.  100 %: fully restored faces."


@dataclass(frozen=True)
class Backend:
    """What the dialog knows of the backend: its address, models, device and face models (installed or
    installable), or why it could not be reached."""

    address: str
    models: list[ModelInfo]
    server: ServerInfo | None
    problem: str | None = None
    face_models: list[ModelInfo] = field(default_factory=list)


def _label(text: str, dim: bool = False) -> Gtk.Label:
    label = Gtk.Label(label=text)
    label.set_line_wrap(True)
    label.set_max_width_chars(60)
    label.set_xalign(0.0)
    if dim:
        label.get_style_context().add_class("dim-label")
    return label


def _in_percent(widget: Gtk.Widget, label: str) -> None:
    """Whole percent, saying so: the arguments themselves run from 0 to 1."""
    if isinstance(widget, GimpUi.SpinScale):
        widget.set_digits(0)
        widget.set_label(label)


@dataclass(frozen=True)
class LayerKind:
    """What of a layer besides its size the time depends on, found once per dialog."""

    channels: int
    varying_alpha: bool

    @classmethod
    def of(cls, layer: Gimp.Layer) -> LayerKind:
        return cls(layer_io.pixel_format(layer).channels, layer_io.alpha_varies(layer))


def _summary(
    image: Gimp.Image,
    layers: list[Gimp.Layer],
    config: Gimp.ProcedureConfig,
    backend: Backend,
    models: list[ModelInfo],
    face_models: list[ModelInfo],
    times: tuple[TimeEstimates, list[LayerKind]] | None,
) -> str:
    """The result's size, that the canvas grows, whether faces can be restored, and the time the
    backend will take."""
    try:
        chosen = settings.Settings.from_config(config)
        scale = chosen.scale
        sources = [placement.plan_source(layer, scale) for layer in layers]
    except (ValueError, placement.PlacementError) as error:
        return str(error)
    lines = [settings.result_text((image.get_width(), image.get_height()), scale, sources[0].masked)]
    if (chosen.faces or chosen.faces_only) and backend.server is not None:
        note = settings.face_model_note(backend.server.protocol_version, face_models)
        if note:  # a backend too old for faces, or without a face model: say so and what to do
            lines.append(note)
    filters = sorted({name for layer in layers for name in filtered.visible_filters(layer)})
    if filters:  # what is enhanced is what the person sees: say so, as the new layer bakes them in
        lines.append(f"Enhanced with its filters ({', '.join(filters)}): the new layer holds their look.")
    model = next((m for m in models if m.name == config.get_property("model")), None)
    if model is not None and times is not None and not chosen.faces_only:  # faces only: no model
        estimates, kinds = times
        work = tuple(
            LayerWork(s.width, s.height, kind.channels, kind.varying_alpha)
            for s, kind in zip(sources, kinds, strict=True)
        )
        try:
            options = chosen.options(model)
        except ValueError as error:
            return str(error)
        lines.append(estimates.line(EstimateJob(work, replace(options, faces=False)), model))
    return "\n".join(lines)


def run_dialog(
    procedure: Gimp.Procedure,
    config: Gimp.ProcedureConfig,
    image: Gimp.Image,
    layers: list[Gimp.Layer],
    backend: Backend,
) -> bool:
    """Show the dialog; True when the person pressed OK. Without models (backend unreachable) the model
    is a text field and `backend.problem` says why."""
    GimpUi.init("ai-enhance")
    for name in ("model", "server", "face-model"):  # text fields cannot show an unset string
        if config.get_property(name) is None:
            config.set_property(name, "")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "AI Enhance")
    panel: PreviewPanel | None = None
    estimator: NewestOnly | None = None  # asks the backend for time estimates in the background
    chooser: ModelChooser | None = None
    handlers: list[int] = []  # on the config, which outlives the dialog: disconnected when it closes
    try:
        # Widgets asked for before `fill` replace the default ones (spin buttons for doubles).
        strength = dialog.get_spin_scale("strength", 100.0)
        _in_percent(strength, "Detail: faithful \u2194 sharp (%)")
        strength.set_tooltip_text(STRENGTH_TOOLTIP)
        _in_percent(dialog.get_spin_scale("auto-contrast", 100.0), "Auto contrast and colour (%)")
        face_strength = dialog.get_spin_scale("face-strength", 100.0)
        _in_percent(face_strength, "Face strength (%)")
        face_strength.set_tooltip_text(FACE_STRENGTH_TOOLTIP)
        custom_scale = dialog.get_spin_scale("custom-scale", 1.0)
        dialog.get_label("advanced-label", "Advanced", False, False)
        dialog.fill_box("advanced-box", ["tile-size", "server"])
        dialog.fill_expander("advanced", "advanced-label", False, "advanced-box")
        fields = ["scale", "custom-scale", "strength", "colour-fidelity", "auto-contrast"]
        if any(layer.has_alpha() for layer in layers):  # nothing to choose for opaque layers
            fields.append("alpha-mode")
        fields += ["restore-faces", "face-strength", "faces-only"]
        reachable = backend.server is not None
        if not reachable:
            fields.append("face-model")  # a name to type; with a backend, a list when it has several
        fields.append("advanced")
        dialog.fill(fields if reachable else ["model", *fields])

        summary = _label("")
        content = dialog.get_content_area()
        content.pack_start(summary, False, False, 6)
        summary.show()
        known = {"models": backend.models}  # refreshed after each preview: it measured the model's speed

        def show_summary() -> None:
            summary.set_text(_summary(image, layers, config, backend, known["models"], face_models(), times))

        def answered(outcome: Answer | transport.BackendError) -> bool:
            if estimator is not None:  # the dialog is still open
                times[0].answered(outcome)
                show_summary()
            return GLib.SOURCE_REMOVE

        times = None
        if backend.server is not None:
            estimator = NewestOnly(
                lambda job, cancelled: ask_backend(backend.address, job, cancelled),
                lambda outcome: GLib.idle_add(answered, outcome),
                "The time estimate",
            )
            server = backend.server
            estimates = TimeEstimates(server.protocol_version, server.device, estimator.request)
            times = (estimates, [LayerKind.of(layer) for layer in layers])

        def remeasured() -> None:
            try:
                client = transport.connect(backend.address, transport.BackendConfig(), lambda *_: None)
                try:
                    known["models"] = transport.list_models(client)
                finally:
                    client.close()
            except transport.BackendError:
                return  # the estimate stays as it was
            show_summary()

        def face_models() -> list[ModelInfo]:
            """The backend's face models as last listed (the list follows installs and the models folder)."""
            return chooser.face_models if chooser is not None else backend.face_models

        panel = PreviewPanel(backend.address, image, layers[0], remeasured) if reachable else None

        def refresh(*_: object) -> None:
            chosen = chooser.chosen() if chooser is not None else None
            # Strength interpolates a PSNR/GAN pair; other models have nothing to interpolate.
            strength.set_visible(chosen.has_strength if chosen else chooser is None)
            custom_scale.set_visible(config.get_property("scale") == "custom")
            faces = config.get_property("restore-faces") or config.get_property("faces-only")
            face_strength.set_visible(faces)
            if face_choice is not None:  # a list only when the backend has several face models
                face_choice.update(face_models())
                face_choice.set_visible(faces and face_choice.choosable)
            show_summary()
            if panel is not None and chosen is not None:
                panel.schedule(settings.Settings.from_config(config), chosen)

        face_choice = FaceModelChoice(config) if reachable else None
        for widget in (strength, custom_scale, face_strength, face_choice):
            if widget is not None:
                widget.set_no_show_all(True)
        for name in ("scale", "custom-scale", "strength", "colour-fidelity", "auto-contrast", "alpha-mode",
                     "restore-faces", "face-strength", "face-model", "faces-only"):
            handlers.append(config.connect(f"notify::{name}", refresh))
        if reachable:
            suggested = backend.server.suggested_model if backend.server else ""
            chooser = ModelChooser(
                config, backend.address, backend.models, suggested, refresh, backend.face_models
            )
            content.pack_start(chooser, False, False, 6)
            content.reorder_child(chooser, 0)
            chooser.show_all()
            # Back from the file manager (a model dropped into the backend's folder): list it.
            dialog.connect("focus-in-event", chooser.reload_on_focus)
        if face_choice is not None:
            content.pack_start(face_choice, False, False, 6)
        if panel is not None:
            content.pack_start(panel, False, False, 6)
            panel.show_all()
        if backend.problem:
            note = _label(backend.problem)
            content.pack_start(note, False, False, 6)
            content.reorder_child(note, 0)
            note.show()
        refresh()
        return dialog.run()
    finally:
        # Nothing of the dialog may run once it is gone: no option change reaches its widgets or
        # schedules a preview, and no preview result arrives (see PreviewPanel.stop).
        for handler in handlers:
            config.disconnect(handler)
        if panel is not None:
            panel.stop()
        if estimator is not None:
            estimator.stop()
            estimator = None
        dialog.destroy()
