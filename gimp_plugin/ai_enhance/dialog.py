"""The interactive dialog: GIMP's own procedure dialog, a model list filled from the backend, a line
that says before OK what will happen to the image and how long it will take, and a preview."""

from __future__ import annotations

from dataclasses import dataclass

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
import filtered  # noqa: E402
import placement  # noqa: E402
import settings  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gimp, GimpUi, Gtk  # noqa: E402
from model_chooser import ModelChooser  # noqa: E402
from preview_panel import PreviewPanel  # noqa: E402

from image_enhancer.wire import ModelInfo, ServerInfo  # noqa: E402

STRENGTH_TOOLTIP = (
    "0 %: faithful — smooth, nothing invented.  100 %: sharp — crisp detail and texture the model invents."
)
FACE_STRENGTH_TOOLTIP = "0 %: faces as the enhancement made them.  100 %: fully restored faces."
NO_FACE_MODEL = (
    "Restore faces: the backend has no face model. Install one with  python install.py --models gfpgan-1.4"
)


@dataclass(frozen=True)
class Backend:
    """What the dialog knows of the backend: its address, models and device, or why it could not be
    reached."""

    address: str
    models: list[ModelInfo]
    server: ServerInfo | None
    problem: str | None = None


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


def _summary(
    image: Gimp.Image,
    layers: list[Gimp.Layer],
    config: Gimp.ProcedureConfig,
    backend: Backend,
    models: list[ModelInfo],
    face_models: list[str],
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
    if (chosen.faces or chosen.faces_only) and backend.server is not None and not face_models:
        lines.append(NO_FACE_MODEL)
    filters = sorted({name for layer in layers for name in filtered.visible_filters(layer)})
    if filters:  # what is enhanced is what the person sees: say so, as the new layer bakes them in
        lines.append(f"Enhanced with its filters ({', '.join(filters)}): the new layer holds their look.")
    model = next((m for m in models if m.name == config.get_property("model")), None)
    if model is not None and backend.server is not None and not chosen.faces_only:  # faces only: no model
        jobs = settings.network_jobs([(s.width, s.height) for s in sources], model)
        lines.append(settings.estimate_text(jobs, model, backend.server.device))
    return "\n".join(lines)


def _face_models(address: str) -> list[str]:
    """The backend's face models (its default first); empty when it has none or cannot say."""
    try:
        client = transport.connect(address, transport.BackendConfig(), lambda *_: None)
        try:
            return transport.list_face_models(client)
        finally:
            client.close()
    except transport.BackendError:
        return []


def _face_model_choice(config: Gimp.ProcedureConfig, names: list[str]) -> Gtk.Box:
    """A "Face model" list of the backend's face models; the choice goes into the config's "face-model"
    (the first, the backend's default, when the remembered one is not installed)."""
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    row.pack_start(Gtk.Label(label="Face model"), False, False, 0)
    combo = Gtk.ComboBoxText()
    for name in names:
        combo.append(name, name)
    remembered = config.get_property("face-model") or ""
    combo.set_active_id(remembered if remembered in names else names[0])
    config.set_property("face-model", combo.get_active_id())
    combo.connect("changed", lambda box: config.set_property("face-model", box.get_active_id() or ""))
    row.pack_start(combo, True, True, 0)
    return row


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
        face_models = _face_models(backend.address) if reachable else []
        if not reachable:
            fields.append("face-model")  # a name to type; with a backend, a list when it has several
        fields.append("advanced")
        dialog.fill(fields if reachable else ["model", *fields])

        summary = _label("")
        content = dialog.get_content_area()
        content.pack_start(summary, False, False, 6)
        summary.show()
        known = {"models": backend.models}  # refreshed after each preview: it measured the model's speed

        def remeasured() -> None:
            try:
                client = transport.connect(backend.address, transport.BackendConfig(), lambda *_: None)
                try:
                    known["models"] = transport.list_models(client)
                finally:
                    client.close()
            except transport.BackendError:
                return  # the estimate stays as it was
            summary.set_text(_summary(image, layers, config, backend, known["models"], face_models))

        panel = PreviewPanel(backend.address, image, layers[0], remeasured) if reachable else None

        def refresh(*_: object) -> None:
            chosen = chooser.chosen() if chooser is not None else None
            # Strength interpolates a PSNR/GAN pair; other models have nothing to interpolate.
            strength.set_visible(chosen.has_strength if chosen else chooser is None)
            custom_scale.set_visible(config.get_property("scale") == "custom")
            faces = config.get_property("restore-faces") or config.get_property("faces-only")
            face_strength.set_visible(faces)
            if face_choice is not None:
                face_choice.set_visible(faces)
            summary.set_text(_summary(image, layers, config, backend, known["models"], face_models))
            if panel is not None and chosen is not None:
                panel.schedule(settings.Settings.from_config(config), chosen)

        face_choice = _face_model_choice(config, face_models) if len(face_models) > 1 else None
        for widget in (strength, custom_scale, face_strength, face_choice):
            if widget is not None:
                widget.set_no_show_all(True)
        for name in ("scale", "custom-scale", "strength", "colour-fidelity", "auto-contrast", "alpha-mode",
                     "restore-faces", "face-strength", "face-model", "faces-only"):
            handlers.append(config.connect(f"notify::{name}", refresh))
        if reachable:
            suggested = backend.server.suggested_model if backend.server else ""
            chooser = ModelChooser(config, backend.address, backend.models, suggested, refresh)
            content.pack_start(chooser, False, False, 6)
            content.reorder_child(chooser, 0)
            chooser.show_all()
            # Back from the file manager (a model dropped into the backend's folder): list it.
            dialog.connect("focus-in-event", chooser.reload_on_focus)
        if face_choice is not None:
            content.pack_start(face_choice, False, False, 6)
            for child in face_choice.get_children():
                child.show()
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
        dialog.destroy()
