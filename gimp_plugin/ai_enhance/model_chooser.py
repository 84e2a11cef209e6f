"""The dialog's model row: one entry per installed model or pair (settings.model_entries), "Get more
models…" to install what the backend's manifest offers, and a list that follows the backend's models
folder (it is read again whenever the dialog gets the focus back, so a dropped-in file appears without
restarting GIMP)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gtk", "3.0")
import settings  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gimp, GLib, Gtk  # noqa: E402

from image_enhancer.wire import InstallEvent, ModelInfo  # noqa: E402


def _list(address: str) -> list[ModelInfo] | None:
    """The backend's models, or None when it cannot say now (the list then stays as it was)."""
    try:
        client = transport.connect(address, transport.BackendConfig(), lambda *_: None)
        try:
            return transport.list_models(client)
        finally:
            client.close()
    except transport.BackendError:
        return None


def _what_lists(models: list[ModelInfo]) -> list[tuple[str, bool, bool, str]]:
    """What the list and the Detail control show of the models."""
    return [(m.name, m.installed, m.has_strength, m.pair_member_of) for m in models]


class ModelChooser(Gtk.Box):
    """The model list and its "Get more models…" button; the choice goes into the config's "model".
    `on_change` is called after the choice or the list changed."""

    def __init__(
        self,
        config: Gimp.ProcedureConfig,
        address: str,
        models: list[ModelInfo],
        suggested: str,
        on_change: Callable[[], None],
    ) -> None:
        super().__init__(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        self._config, self._address, self._on_change = config, address, on_change
        self.models = models
        self._combo = Gtk.ComboBoxText()
        self._filling = False
        self._fill(settings.initial_model(models, config.get_property("model") or "", suggested))
        self._combo.connect("changed", self._changed)
        label = Gtk.Label.new_with_mnemonic("_Model")
        label.set_mnemonic_widget(self._combo)
        label.set_xalign(0.0)
        more = Gtk.Button.new_with_mnemonic("_Get more models…")
        more.set_tooltip_text("Models the backend can download and install, with their size and licence")
        more.connect("clicked", self._get_more)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        row.pack_start(label, False, False, 0)
        row.pack_start(self._combo, True, True, 0)
        row.pack_start(more, False, False, 0)
        self._hint = Gtk.Label()
        self._hint.set_xalign(0.0)
        self._hint.get_style_context().add_class("dim-label")
        self.pack_start(row, False, False, 0)
        self.pack_start(self._hint, False, False, 0)
        self._show_hint()

    def chosen(self) -> ModelInfo | None:
        return next((m for m in self.models if m.name == self._combo.get_active_id()), None)

    def reload(self, choose: str = "") -> None:
        """Read the backend's models again; keep the choice (or take `choose`) if it is still there."""
        models = _list(self._address)
        if models is None:
            return
        same = _what_lists(models) == _what_lists(self.models)
        self.models = models  # measured speeds may have changed: nothing to show for that
        if same and not choose:
            return
        self._fill(choose or self._combo.get_active_id() or "")
        self._show_hint()
        self._on_change()

    def reload_on_focus(self, *_: object) -> bool:
        self.reload()
        return False  # GTK goes on handling the event

    def _fill(self, wanted: str) -> None:
        self._filling = True
        try:
            self._combo.remove_all()
            for model in settings.model_entries(self.models):
                self._combo.append(model.name, settings.model_label(model))
            if not self._combo.set_active_id(wanted):
                self._combo.set_active_id(settings.initial_model(self.models, wanted, ""))
        finally:
            self._filling = False
        self._store_choice()

    def _store_choice(self) -> None:
        name = self._combo.get_active_id() or ""
        self._config.set_property("model", name)
        self._combo.set_tooltip_text(f"Model: {name}")

    def _changed(self, _combo: Gtk.ComboBoxText) -> None:
        if self._filling:
            return
        self._store_choice()
        self._on_change()

    def _show_hint(self) -> None:
        hint = settings.more_models_hint(self.models)
        self._hint.set_text(hint)
        self._hint.set_visible(bool(hint))

    def _get_more(self, button: Gtk.Button) -> None:
        self.reload()
        installed = CatalogueDialog(button.get_toplevel(), self._address, self.models).run_for_install()
        self.reload(choose=installed)


class CatalogueDialog(Gtk.Dialog):
    """What the backend can install, one line each (what it is for, download size, licence); Install
    has the backend download and verify the chosen one, with progress here."""

    def __init__(self, parent: Gtk.Window, address: str, models: list[ModelInfo]) -> None:
        super().__init__(title="Get more models", transient_for=parent, modal=True)
        self._address = address
        self._offered = settings.catalogue(models)
        self._installed = ""
        self._cancel = threading.Event()
        self.add_button("_Close", Gtk.ResponseType.CLOSE)
        self._install = Gtk.Button.new_with_mnemonic("_Install")
        self._install.connect("clicked", self._start)
        box = self.get_content_area()
        box.set_spacing(6)
        box.set_border_width(12)
        self._choices: list[tuple[Gtk.RadioButton, ModelInfo]] = []
        first = None
        for model in self._offered:
            button = Gtk.RadioButton.new_with_label_from_widget(first, settings.catalogue_text(model, models))
            button.set_tooltip_text(f"Model: {model.name} ({model.architecture} ×{model.scale})")
            first = first or button
            self._choices.append((button, model))
            box.pack_start(button, False, False, 0)
        if not self._offered:
            box.pack_start(Gtk.Label(label="Every model the backend offers is installed."), False, False, 0)
        self._install.set_sensitive(bool(self._offered))
        self._progress = Gtk.ProgressBar()
        self._progress.set_show_text(True)
        self._progress.set_no_show_all(True)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        row.pack_start(self._install, False, False, 0)
        row.pack_start(self._progress, True, True, 0)
        box.pack_start(row, False, False, 6)

    def run_for_install(self) -> str:
        """Show the dialog until it is closed; the name of the model installed ("" for none)."""
        self.show_all()
        self.run()
        self._cancel.set()  # a download still running stops at its next block
        self.destroy()
        return self._installed

    def _start(self, _button: Gtk.Button) -> None:
        model = next(m for button, m in self._choices if button.get_active())
        self._install.set_sensitive(False)
        self._progress.show()
        self._progress.set_text(f"Installing {model.name}…")

        def report(event: InstallEvent) -> None:
            if self._cancel.is_set():
                raise transport.BackendError("cancelled")
            GLib.idle_add(self._step, event)

        def work() -> None:
            try:
                transport.install_model(self._address, model.name, report)
            except transport.BackendError as error:
                GLib.idle_add(self._ended, model, str(error))
            else:
                GLib.idle_add(self._ended, model, "")

        threading.Thread(target=work, name="ai-enhance-install", daemon=True).start()

    def _step(self, event: InstallEvent) -> bool:
        fraction = event.fraction
        if fraction is None:
            self._progress.pulse()
        else:
            self._progress.set_fraction(fraction)
        done = f" ({settings.size_text(event.done_bytes)} of {settings.size_text(event.total_bytes)})"
        self._progress.set_text(event.message + (done if event.stage == "downloading" else ""))
        return GLib.SOURCE_REMOVE

    def _ended(self, model: ModelInfo, problem: str) -> bool:
        if problem:
            self._progress.set_text(f"Not installed: {problem}")
            self._install.set_sensitive(True)
        else:
            self._installed = model.name
            self._progress.set_fraction(1.0)
            self._progress.set_text(f"{settings.model_label(model)} is installed and verified.")
        return GLib.SOURCE_REMOVE
