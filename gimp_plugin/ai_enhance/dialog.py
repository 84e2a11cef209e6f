"""The interactive dialog: GIMP's own procedure dialog, plus a model list filled from the backend."""

from __future__ import annotations

from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GimpUi, GObject, Gtk  # noqa: E402

from image_enhancer.client.core import ModelInfo  # noqa: E402


def _model_label(model: ModelInfo) -> str:
    label = f"{model.name}  (x{model.scale}, {model.architecture})"
    return label if model.installed else label + " - not installed"


def _model_row(
    config: Gimp.ProcedureConfig, models: list[ModelInfo], on_change: Callable[[str], None]
) -> tuple[Gtk.Widget, Gtk.ComboBoxText]:
    """A combo box over the backend's models that writes the choice into the config's "model"."""
    combo = Gtk.ComboBoxText()
    for model in models:
        combo.append(model.name, _model_label(model))
    default = next((m.name for m in models if m.is_default), models[0].name)
    if not combo.set_active_id(config.get_property("model") or default):
        combo.set_active_id(default)

    def changed(widget: Gtk.ComboBoxText) -> None:
        config.set_property("model", widget.get_active_id())
        on_change(widget.get_active_id())

    combo.connect("changed", changed)
    label = Gtk.Label.new_with_mnemonic("_Model")
    label.set_mnemonic_widget(combo)
    label.set_xalign(0.0)
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
    row.pack_start(label, False, False, 0)
    row.pack_start(combo, True, True, 0)
    return row, combo


def run_dialog(
    procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, models: list[ModelInfo], problem: str | None
) -> bool:
    """Show the dialog; True when the person pressed OK. Without models (backend unreachable) the model
    is a text field and `problem` says why."""
    GimpUi.init("ai-enhance")
    for name in ("model", "server"):  # text fields cannot show an unset string
        if config.get_property(name) is None:
            config.set_property(name, "")
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "AI Enhance")
    try:
        # Widgets asked for before `fill` replace the default ones (spin buttons for doubles).
        strength = dialog.get_spin_scale("strength", 100.0)  # shown in percent
        dialog.get_spin_scale("auto-contrast", 100.0)
        dialog.get_spin_scale("custom-scale", 1.0)
        dialog.get_label("advanced-label", "Advanced", False, False)
        dialog.fill_box("advanced-box", ["tile-size", "server"])
        dialog.fill_expander("advanced", "advanced-label", False, "advanced-box")
        fields = [
            "scale",
            "custom-scale",
            "strength",
            "colour-fidelity",
            "auto-contrast",
            "alpha-mode",
            "advanced",
        ]
        dialog.fill(fields if models else ["model", *fields])

        strength.set_no_show_all(True)

        def show_strength(name: str) -> None:
            # Strength interpolates a PSNR/GAN pair; other models have nothing to interpolate.
            strength.set_visible(any(m.name == name and m.has_strength for m in models) if models else True)

        custom_only = Gimp.ValueArray.new(1)
        custom_only.append(GObject.Value(GObject.TYPE_STRING, "custom"))
        dialog.set_sensitive_if_in("custom-scale", None, "scale", custom_only, True)
        content = dialog.get_content_area()
        if models:
            row, combo = _model_row(config, models, show_strength)
            content.pack_start(row, False, False, 6)
            content.reorder_child(row, 0)
            row.show_all()
            show_strength(combo.get_active_id())
        else:
            show_strength("")
        if problem:
            note = Gtk.Label(label=problem)
            note.set_line_wrap(True)
            note.set_max_width_chars(60)
            content.pack_start(note, False, False, 6)
            content.reorder_child(note, 0)
            note.show()
        return dialog.run()
    finally:
        dialog.destroy()
