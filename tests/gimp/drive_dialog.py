"""Runs inside GIMP (python-fu-eval batch) on a display: opens the plug-in's real dialog through the
plug-in's own `run`, as Filters > Enhance > AI Enhance does, and works it as a person would.

The test writes `job.json` into a folder and sets JOB_DIR before exec'ing this file. It names the photo
to open, the plug-in's folder and the scenarios: {name: {"steps": [...], "repeat": N, "arguments":
{...}}}. Each run opens the photo afresh and works the dialog through the steps in order; a step waits
until its condition holds (or cancels the dialog after its timeout, noting the problem), then acts:

    {"wait": "preview"}          the after picture has come back for the options now set
    {"model": NAME}              choose NAME in the model list ("" = the model the dialog opened with)
    {"sleep": SECONDS}
    {"zoom": 2}                  the 2:1 zoom button
    {"map": [X, Y]}              a click on the map at (X, Y) in map pixels
    {"respond": "ok" | "cancel"} press OK or Cancel

What was seen goes to `result.json`: per scenario a list of runs, each with the plug-in's status, its
layers, the preview's lines, what happened when, and the plug-in's threads left a second after it
returned; and the plug-in's error log. The test on the host judges it.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

from gi.repository import Gdk, Gimp, Gio, GLib, Gtk

POLL_MS = 50


def widgets(root: Gtk.Widget) -> list[Gtk.Widget]:
    found = [root]
    if isinstance(root, Gtk.Container):
        for child in root.get_children():
            found += widgets(child)
    return found


def the_dialog() -> Gtk.Dialog | None:
    shown = [w for w in Gtk.Window.list_toplevels() if isinstance(w, Gtk.Dialog) and w.get_visible()]
    return shown[0] if shown else None


def one(dialog: Gtk.Dialog, kind: type) -> Gtk.Widget:
    return next(w for w in widgets(dialog) if isinstance(w, kind))


def after_shown(panel: Gtk.Widget) -> bool:
    """The after picture holds a result, not the cleared stand-in."""
    import preview_panel

    blank = bytes([(preview_panel.BLANK >> shift) & 0xFF for shift in (24, 16, 8)])
    pixbuf = panel._after.get_pixbuf()
    if pixbuf is None:
        return False
    pixels = pixbuf.get_pixels()
    step = pixbuf.get_n_channels()
    return any(pixels[i : i + 3] != blank for i in range(0, min(len(pixels), 4096 * step), step))


class Driver:
    """Works through the steps from GLib timeouts while the dialog's own loop runs."""

    def __init__(self, steps: list[dict], seen: dict, step_timeout: float = 120) -> None:
        self.steps, self.seen, self.step_timeout = list(steps), seen, step_timeout
        self.started = time.monotonic()
        self.step_started = self.started
        self.first_model = ""
        GLib.timeout_add(POLL_MS, self.poll)

    def note(self, text: str) -> None:
        self.seen["log"].append(f"{time.monotonic() - self.started:6.2f} {text}")

    def poll(self) -> bool:
        dialog = the_dialog()
        if dialog is None:
            if time.monotonic() - self.started > self.step_timeout:
                self.seen["problem"] = "the dialog never appeared"
                return GLib.SOURCE_REMOVE
            return GLib.SOURCE_CONTINUE
        import model_chooser
        import preview_panel

        chooser, panel = one(dialog, model_chooser.ModelChooser), one(dialog, preview_panel.PreviewPanel)
        if not self.first_model:
            self.first_model = chooser._combo.get_active_id()
        while self.steps:
            step = self.steps[0]
            waited = time.monotonic() - self.step_started
            if waited > step.get("timeout", self.step_timeout):
                self.seen["problem"] = f"step {step} did not happen in {waited:.0f} s"
                dialog.response(Gtk.ResponseType.CANCEL)
                return GLib.SOURCE_REMOVE
            if "wait" in step and not (panel._timer == 0 and after_shown(panel)):
                return GLib.SOURCE_CONTINUE
            if "sleep" in step and waited < step["sleep"]:
                return GLib.SOURCE_CONTINUE
            self.steps.pop(0)
            self.step_started = time.monotonic()
            self.act(step, dialog, chooser, panel)
            if "respond" in step:
                return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    def act(self, step: dict, dialog: Gtk.Dialog, chooser: Gtk.Widget, panel: Gtk.Widget) -> None:
        if "wait" in step:
            self.seen["previews"].append(panel._status.get_text())
            self.note(f"preview shown: {panel._status.get_text()[:60]}")
        elif "model" in step:
            chooser._combo.set_active_id(step["model"] or self.first_model)
            self.note(f"model {chooser._combo.get_active_id()}")
        elif "zoom" in step:
            label = f"{step['zoom']}:1"
            buttons = [w for w in widgets(panel) if isinstance(w, Gtk.RadioButton)]
            button = next(w for w in buttons if w.get_label() == label)
            button.set_active(True)
            self.note(f"zoom {step['zoom']}:1")
        elif "map" in step:
            boxes = [w for w in widgets(panel) if isinstance(w, Gtk.EventBox)]
            box = next(w for w in boxes if w.get_child() is panel._map_image)
            event = Gdk.Event.new(Gdk.EventType.BUTTON_PRESS)
            event.button.x, event.button.y, event.button.button = *step["map"], 1
            event.button.window = box.get_window()
            box.emit("button-press-event", event)
            self.note(f"map clicked at {step['map']}")
        elif "respond" in step:
            labels = [w.get_text() for w in widgets(dialog) if isinstance(w, Gtk.Label)]
            self.seen["summary"] = next(text for text in labels if text.startswith("Result:"))
            response = {"ok": Gtk.ResponseType.OK, "cancel": Gtk.ResponseType.CANCEL}[step["respond"]]
            self.note(f"respond {step['respond']}")
            dialog.response(response)


def run_once(ai_enhance: object, procedure: Gimp.Procedure, photo: Path, scenario: dict) -> dict:
    """One run of the plug-in on a freshly opened `photo`, its dialog worked through `scenario`."""
    seen: dict = {"log": [], "previews": []}
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(str(photo)))
    config = procedure.create_config()
    for key, value in scenario.get("arguments", {}).items():
        config.set_property(key, value)
    Driver(scenario["steps"], seen, scenario.get("step_timeout", 120))
    started = time.monotonic()
    values = ai_enhance.run(procedure, Gimp.RunMode.INTERACTIVE, image, [image.get_layers()[0]], config, None)
    seen["seconds"] = time.monotonic() - started
    seen["status"] = values.index(0).value_nick
    if values.index(0) == Gimp.PDBStatusType.SUCCESS:
        seen["new_layer"] = values.index(1).get_name()
    elif values.length() > 1 and values.index(1):
        seen["error"] = str(values.index(1))
    seen["layers"] = [layer.get_name() for layer in image.get_layers()]
    seen["selected"] = [item.get_name() for item in image.get_selected_drawables()]
    time.sleep(1.0)  # a worker that outlived the dialog would still be here
    seen["threads_left"] = [t.name for t in threading.enumerate() if t.name.startswith("ai-enhance")]
    image.delete()
    return seen


def main() -> None:
    """Every scenario of job.json, each `repeat` times, in this one process, as GIMP runs a plug-in
    again and again; then the plug-in's error log."""
    out_dir = Path(os.environ["JOB_DIR"])
    job = json.loads((out_dir / "job.json").read_text())
    sys.path.insert(0, job["plugin_dir"])
    import ai_enhance  # the plug-in itself; its __main__ guard keeps GIMP's main loop out

    procedure = Gimp.get_pdb().lookup_procedure("python-fu-ai-enhance")
    result: dict = {}
    photo = out_dir / job["photo"]
    for name, scenario in job["scenarios"].items():
        repeat = scenario.get("repeat", 1)
        result[name] = [run_once(ai_enhance, procedure, photo, scenario) for _ in range(repeat)]
    log = Path(Gimp.directory()) / ai_enhance.crash_log.LOG_NAME
    result["error_log"] = log.read_text() if log.exists() else ""
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
