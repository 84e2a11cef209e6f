"""The dialog's model row: one entry per installed model or pair (settings.model_entries), "Get more
models…" to install what the backend's manifest offers (face models included), and a list that follows
the backend's models folder (it is read again whenever the dialog gets the focus back, so a dropped-in
file appears without restarting GIMP). Also the Face model list, which follows the same listing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gtk", "3.0")
import settings  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gimp, GLib, Gtk  # noqa: E402

from image_enhancer.wire import InstallEvent, ModelCatalogue, ModelInfo  # noqa: E402


def _list(address: str) -> ModelCatalogue | None:
    """The backend's models and face models, or None when it cannot say now (the lists then stay as
    they were)."""
    try:
        client = transport.connect(address, transport.BackendConfig(), lambda *_: None)
        try:
            return transport.catalogue(client)
        finally:
            client.close()
    except transport.BackendError:
        return None


def _what_lists(models: Sequence[ModelInfo]) -> list[tuple[str, bool, bool, str]]:
    """What the lists, the Detail control and the catalogue show of the models."""
    return [(m.name, m.installed, m.has_strength, m.pair_member_of) for m in models]


class ModelChooser(Gtk.Box):
    """The model list and its "Get more models…" button; the choice goes into the config's "model".
    `on_change` is called after the choice or the lists changed. `face_models`: the backend's face
    models, installed or installable, kept as up to date as the models (the Face model list shows
    them); a face model installed here becomes the config's "face-model"."""

    def __init__(
        self,
        config: Gimp.ProcedureConfig,
        address: str,
        models: list[ModelInfo],
        suggested: str,
        on_change: Callable[[], None],
        face_models: Sequence[ModelInfo] = (),
    ) -> None:
        super().__init__(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        self._config, self._address, self._on_change = config, address, on_change
        self.models = models
        self.face_models = list(face_models)
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
        """Read the backend's models again; keep the choice (or take `choose`) if it is still there. A
        face model `choose` becomes the face model; the model stays as it was."""
        listed = _list(self._address)
        if listed is None:
            return
        before = (_what_lists(self.models), _what_lists(self.face_models))
        # Measured speeds may have changed too: nothing to show for that.
        self.models, self.face_models = list(listed.models), list(listed.face_models)
        same = before == (_what_lists(self.models), _what_lists(self.face_models))
        if choose and choose in settings.face_model_names(self.face_models):
            self._config.set_property("face-model", choose)
            choose = ""
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
        hint = settings.more_models_hint(self.models, self.face_models)
        self._hint.set_text(hint)
        self._hint.set_visible(bool(hint))

    def _get_more(self, button: Gtk.Button) -> None:
        self.reload()
        catalogue = CatalogueDialog(button.get_toplevel(), self._address, self.models, self.face_models)
        self.reload(choose=catalogue.run_for_install())


class FaceModelChoice(Gtk.Box):
    """The Face model list: the backend's installed face models, its default first; the choice goes
    into the config's "face-model" (the default when the remembered one is not installed). The dialog
    shows it while faces are asked for and there is a choice (`choosable`)."""

    def __init__(self, config: Gimp.ProcedureConfig) -> None:
        super().__init__(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self._config = config
        self._names: list[str] = []
        self._filling = False
        self._combo = Gtk.ComboBoxText()
        self._combo.set_tooltip_text(
            "The face model that restores the faces (installed ones; more: Get more models…)"
        )
        self._combo.connect("changed", self._changed)
        label = Gtk.Label(label="Face model")
        self.pack_start(label, False, False, 0)
        self.pack_start(self._combo, True, True, 0)
        label.show()
        self._combo.show()

    @property
    def choosable(self) -> bool:
        return len(self._names) > 1

    def update(self, face_models: Sequence[ModelInfo]) -> None:
        """List the installed ones of `face_models` and keep the config's choice one of them."""
        names = settings.face_model_names(face_models)
        wanted = settings.initial_face_model(names, self._config.get_property("face-model") or "")
        self._filling = True
        try:
            if names != self._names:
                self._combo.remove_all()
                for name in names:
                    self._combo.append(name, name)
                self._names = names
            if wanted and self._combo.get_active_id() != wanted:
                self._combo.set_active_id(wanted)
        finally:
            self._filling = False
        if (self._config.get_property("face-model") or "") != wanted:
            self._config.set_property("face-model", wanted)

    def _changed(self, combo: Gtk.ComboBoxText) -> None:
        if not self._filling:
            self._config.set_property("face-model", combo.get_active_id() or "")


class CatalogueDialog(Gtk.Dialog):
    """What the backend can install, one line each (what it is for, download size, licence), its face
    models after its models; Install has the backend download and verify the chosen one, with progress
    here."""

    def __init__(
        self, parent: Gtk.Window, address: str, models: list[ModelInfo], face_models: Sequence[ModelInfo] = ()
    ) -> None:
        super().__init__(title="Get more models", transient_for=parent, modal=True)
        self._address = address
        self._offered = settings.catalogue(models, face_models)
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
            text = settings.catalogue_text(model, models, face_models)
            button = Gtk.RadioButton.new_with_label_from_widget(first, text)
            if model in face_models:
                button.set_tooltip_text(f"Face model: {model.name} ({model.architecture})")
            else:
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
