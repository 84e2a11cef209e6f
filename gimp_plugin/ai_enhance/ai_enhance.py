#!/usr/bin/env python3
"""AI Enhance for GIMP 3: Filters > Enhance > AI Enhance...

A thin plug-in: it hands the selected layers' pixels (in the image's precision) to the Image Enhancer
backend over gRPC and puts each result into a new layer above its original. The original layer's
pixels are never touched and the whole change is one undo step. From scripts:

    proc = Gimp.get_pdb().lookup_procedure("python-fu-ai-enhance")
    cfg = proc.create_config()
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    cfg.set_property("scale", "x2")
    new_layer = proc.run(cfg).index(1)
"""

import os
import sys
from pathlib import Path

# The client's dependencies are vendored beside the plug-in as pure-Python packages, because GIMP's
# Python may be unable to load compiled wheels; these switches make the packages use their Python code.
HERE = Path(__file__).resolve().parent
os.environ["MULTIDICT_NO_EXTENSIONS"] = "1"
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
sys.path.insert(0, str(HERE / "vendor"))

import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
import crash_log  # noqa: E402
import filtered  # noqa: E402
import layer_io  # noqa: E402
import placement  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402
from progress_text import faces_text  # noqa: E402
from settings import SCALE_CHOICES, Settings, result_label  # noqa: E402

from image_enhancer.client.core import ProgressEvent  # noqa: E402
from image_enhancer.request import ALPHA_MODES, MAX_SCALE, MAX_TILE, MIN_SCALE  # noqa: E402
from image_enhancer.wire import ImageInfo  # noqa: E402

PROCEDURE = "python-fu-ai-enhance"
FACES_RESTORED = "faces restored"  # the backend's last progress stage of the face pass (restored, found)
# Set to print where the time goes to stderr: reading the layer, upload, server, download, placing.
TIMINGS_ENV = "AI_ENHANCE_TIMINGS"
_DEFAULTS = Settings()


def _report(text: str, fraction: float | None) -> None:
    Gimp.progress_set_text(text)
    if fraction is None:
        Gimp.progress_pulse()
    else:
        Gimp.progress_update(fraction)


def enhance_layers(image: Gimp.Image, layers: list[Gimp.Layer], settings: Settings) -> list[Gimp.Layer]:
    """Enhance every layer through the backend, then change the image in one undo step.

    All backend work happens before the image is touched, so a failure (or GIMP killing the plug-in
    when the person cancels) leaves the image as it was.
    """
    scale = settings.scale
    sources = [placement.plan_source(layer, scale) for layer in layers]
    config = transport.load_config(HERE)
    client = transport.connect(settings.server or config.address, config, _report)
    try:
        options = settings.options(transport.find_model(transport.list_models(client), settings.model))
        results = []
        timings = {"read_s": 0.0}
        for index, source in enumerate(sources):
            name = source.layer.get_name()
            prefix = f"{name} ({index + 1}/{len(sources)}): " if len(sources) > 1 else ""
            transport.check_size(client, source.width, source.height, name)
            fmt = layer_io.pixel_format(source.layer)
            _report(f"{prefix}Reading the layer", None)
            started = time.perf_counter()
            with filtered.LayerPixels(source.layer) as seen:  # with its filters, as the person sees it
                data = seen.read(source.x, source.y, source.width, source.height, fmt)
            timings["read_s"] += time.perf_counter() - started
            sent = ImageInfo(source.width, source.height, fmt.channels, fmt.sample_type)
            _report(f"{prefix}Sending the layer to the AI backend", None)
            faces: list[tuple[int, int]] = []  # the face pass's final (restored, found)
            got, pixels = transport.enhance(
                client,
                data,
                sent,
                options,
                lambda text, fraction, p=prefix: _report(p + text, fraction),
                timings,
                on_event=lambda event, f=faces: _face_count(event, f),
            )
            if (got.channels, got.sample_type) != (sent.channels, sent.sample_type):
                raise transport.BackendError(
                    f"The backend returned {got.channels} channels of {got.sample_type} for {sent.channels} "
                    f"of {sent.sample_type}; the backend and the plug-in do not match. Reinstall both."
                )
            results.append((source, fmt, got, pixels, faces[-1] if faces else None))
    finally:
        client.close()

    _report("Adding the enhanced layer", None)
    Gimp.context_push()
    image.undo_group_start()
    try:
        started = time.perf_counter()
        if scale != 1.0:
            placement.enlarge_image(image, scale)
        timings["scale_image_s"] = time.perf_counter() - started
        started = time.perf_counter()
        new_layers = [
            placement.add_result_layer(
                image, source, scale, fmt, got.width, got.height, pixels, result_label(options, faces)
            )
            for source, fmt, got, pixels, faces in results
        ]
        timings["write_s"] = time.perf_counter() - started
        image.set_selected_layers(new_layers)  # ready for the next run: the new layers, not their masks
    finally:
        image.undo_group_end()
        Gimp.context_pop()
    Gimp.displays_flush()
    faceless = [source.layer.get_name() for source, *_, faces in results if faces and not faces[1]]
    if faceless:  # asked for faces, found none: say so, or the person looks for a change that is not there
        Gimp.message(f"AI Enhance: {', '.join(faceless)}: {faces_text(0, 0)}.")
    if os.environ.get(TIMINGS_ENV):
        print(f"{TIMINGS_ENV} {json.dumps(timings)}", file=sys.stderr)
    return new_layers


def _face_count(event: ProgressEvent, counts: list[tuple[int, int]]) -> None:
    """Keeps the face pass's final count (done: faces restored, total: faces found)."""
    if event.stage == FACES_RESTORED:
        counts.append((event.done, event.total))


def _failure(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def _dialog_ok(
    procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, image: Gimp.Image, layers: list[Gimp.Layer]
) -> bool:
    """Show the dialog with the backend's models and device (starting the backend if needed)."""
    import dialog  # GTK is loaded only when a person is there to see it

    Gimp.progress_init("AI Enhance: contacting the AI backend")
    try:
        settings = Settings.from_config(config)
        backend_config = transport.load_config(HERE)
        address = settings.server or backend_config.address
        client = transport.connect(address, backend_config, _report)
        try:
            listed = transport.catalogue(client)
            backend = dialog.Backend(
                address, list(listed.models), transport.describe(client), face_models=list(listed.face_models)
            )
        finally:
            client.close()
    except transport.BackendError as error:
        backend = dialog.Backend("", [], None, str(error))
    Gimp.progress_end()
    return dialog.run_dialog(procedure, config, image, layers, backend)


def run(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    data: object,
) -> Gimp.ValueArray:
    Gegl.init(None)
    log = crash_log.log_path(Path(Gimp.directory()))
    crash_log.install(log, Gimp.message)
    try:
        layers = placement.check_drawables(list(drawables))
        if run_mode == Gimp.RunMode.INTERACTIVE and not _dialog_ok(procedure, config, image, layers):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        Gimp.progress_init("AI Enhance")
        new_layers = enhance_layers(image, layers, Settings.from_config(config))
    except (transport.BackendError, placement.PlacementError, ValueError) as error:
        return _failure(procedure, str(error))
    except BaseException as error:  # a bug: say so plainly, keep the details in the log; never crash
        crash_log.record(log, error, "run")
        traceback.print_exc()
        return _failure(procedure, crash_log.message(log, error))
    finally:
        Gimp.progress_end()
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(Gimp.Layer, new_layers[0]))
    return values


class AIEnhance(Gimp.PlugIn):
    def do_set_i18n(self, name: str) -> bool:
        return False

    def do_query_procedures(self) -> list[str]:
        return [PROCEDURE]

    def do_create_procedure(self, name: str) -> Gimp.Procedure:
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(
            Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES
        )
        procedure.set_menu_label("AI _Enhance...")
        procedure.add_menu_path("<Image>/Filters/Enhance")
        procedure.set_documentation(
            "Upscale and restore layers with AI models",
            "Sends the selected layers to the Image Enhancer backend (ESRGAN-family models) and adds each "
            "result as a new layer above its original. Above x1 the canvas and the other layers are scaled "
            "with GIMP's interpolation so everything stays aligned; at x1 the result is limited to the "
            "selection through a layer mask. Returns the new layer.",
            name,
        )
        procedure.set_attribution("Image Enhancer contributors", "BSD-3-Clause", "2026")
        rw = GObject.ParamFlags.READWRITE
        procedure.add_string_argument(
            "model",
            "_Model",
            "Model name as the backend lists it; empty uses its default",
            _DEFAULTS.model,
            rw,
        )
        scales = Gimp.Choice.new()
        for index, key in enumerate(SCALE_CHOICES):
            scales.add(key, index, "Custom" if key == "custom" else key.replace("x", "\u00d7"), "")
        procedure.add_choice_argument("scale", "Scal_e", "Output scale", scales, _DEFAULTS.scale_choice, rw)
        procedure.add_double_argument(
            "custom-scale",
            "C_ustom scale",
            "Scale factor when scale is custom",
            MIN_SCALE,
            MAX_SCALE,
            _DEFAULTS.custom_scale,
            rw,
        )
        procedure.add_double_argument(
            "strength",
            "_Detail: faithful \u2194 sharp",
            "0 = faithful (the PSNR model: smooth, nothing invented), 1 = sharp (the GAN model: invented "
            "detail); only for models with a PSNR/GAN pair",
            0.0,
            1.0,
            _DEFAULTS.strength,
            rw,
        )
        procedure.add_boolean_argument(
            "colour-fidelity",
            "_Keep colours",
            "Keep the result's colours matched to the original",
            _DEFAULTS.colour_fidelity,
            rw,
        )
        procedure.add_double_argument(
            "auto-contrast",
            "_Auto contrast and colour",
            "Strength of automatic contrast and colour correction",
            0.0,
            1.0,
            _DEFAULTS.auto_contrast,
            rw,
        )
        alphas = Gimp.Choice.new()
        alphas.add(ALPHA_MODES[0], 0, "Enhance with the model", "")
        alphas.add(ALPHA_MODES[1], 1, "Bicubic", "")
        procedure.add_choice_argument(
            "alpha-mode", "Alp_ha", "How transparency is upscaled", alphas, _DEFAULTS.alpha_mode, rw
        )
        procedure.add_boolean_argument(
            "restore-faces",
            "Restore _faces",
            "Restore faces after the enhancement with the backend's face model (GFPGAN, RestoreFormer)",
            _DEFAULTS.faces,
            rw,
        )
        procedure.add_double_argument(
            "face-strength",
            "Face stren_gth",
            "0 = faces as the enhancement made them, 1 = fully restored faces",
            0.0,
            1.0,
            _DEFAULTS.face_strength,
            rw,
        )
        procedure.add_string_argument(
            "face-model",
            "Face mode_l",
            "Face model name as the backend lists it; empty uses its default face model",
            _DEFAULTS.face_model,
            rw,
        )
        procedure.add_boolean_argument(
            "faces-only",
            "Faces o_nly (no enhancement)",
            "Restore the faces without enhancing the layer; the scale is then x1",
            _DEFAULTS.faces_only,
            rw,
        )
        procedure.add_int_argument(
            "tile-size",
            "_Tile size",
            "Tile size in input pixels; 0 chooses automatically",
            0,
            MAX_TILE,
            _DEFAULTS.tile,
            rw,
        )
        procedure.add_string_argument(
            "server",
            "Ser_ver address",
            "HOST:PORT or unix:PATH; empty uses the installed backend",
            _DEFAULTS.server,
            rw,
        )
        procedure.add_layer_return_value("layer", "Layer", "The new, enhanced layer", False, rw)
        return procedure


if __name__ == "__main__":
    Gimp.main(AIEnhance.__gtype__, sys.argv)
