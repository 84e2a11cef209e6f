"""Runs inside GIMP (python-fu-eval batch): for each case of `cases.json`, an image with the case's
precision and colour profile, AI Enhance on it, and raw dumps of the layer before and of the result.

Pixels are written and read with babl formats in the image's own colour space (the case names the
encoding, e.g. "R'G'B' u16"), so the dumps hold the values as the image encodes them; nothing here
compares pixels: the test does that on the host. Set JOB_DIR to the folder holding `cases.json`.
"""

import json
import os

import gi

gi.require_version("Babl", "0.1")
from gi.repository import Babl, Gegl, Gimp, Gio  # noqa: E402

BASES = {1: Gimp.ImageBaseType.GRAY, 3: Gimp.ImageBaseType.RGB}
TYPES = {1: Gimp.ImageType.GRAY_IMAGE, 3: Gimp.ImageType.RGB_IMAGE}


def spaced(encoding: str, drawable) -> str:
    """The name of `encoding` (e.g. "R'G'B' u16") in the drawable's colour space."""
    return Babl.get_name(Babl.format_with_space(encoding, drawable.get_format()))


def dump(drawable, name: str, encoding: str) -> dict:
    width, height = drawable.get_width(), drawable.get_height()
    rect = Gegl.Rectangle.new(0, 0, width, height)
    data = drawable.get_buffer().get(rect, 1.0, spaced(encoding, drawable), Gegl.AbyssPolicy.CLAMP)
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(bytes(data))
    return {"file": name, "width": width, "height": height}


def profile_bytes(image) -> bytes | None:
    profile = image.get_color_profile()
    return bytes(profile.get_icc_profile()) if profile is not None else None


def run_case(case: dict) -> dict:
    name, width, height, channels = case["name"], case["width"], case["height"], case["channels"]
    precision = getattr(Gimp.Precision, case["precision"])
    image = Gimp.Image.new_with_precision(width, height, BASES[channels], precision)
    if case["profile"]:
        file = Gio.File.new_for_path(os.path.join(folder, case["profile"]))
        image.set_color_profile(Gimp.ColorProfile.new_from_file(file))
    layer = Gimp.Layer.new(image, "photo", width, height, TYPES[channels], 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    with open(os.path.join(folder, case["input"]), "rb") as handle:
        layer.get_buffer().set(
            Gegl.Rectangle.new(0, 0, width, height), spaced(case["write"], layer), handle.read()
        )
    layer.get_buffer().flush()
    before_profile = profile_bytes(image)
    result = {
        "before": dump(layer, f"{name}-before.raw", case["read"]),
        "before_linear": dump(layer, f"{name}-before-linear.raw", case["linear"]),
    }
    procedure = Gimp.get_pdb().lookup_procedure("python-fu-ai-enhance")
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    for key, value in case["arguments"].items():
        config.set_property(key, value)
    values = procedure.run(config)
    status = values.index(0)
    result["status"] = status.value_nick
    result["precision"] = image.get_precision().value_nick
    result["profile_kept"] = profile_bytes(image) == before_profile and (before_profile is None) == (
        not case["profile"]
    )
    if status == Gimp.PDBStatusType.SUCCESS:
        enhanced = values.index(1)
        result["after"] = dump(enhanced, f"{name}-after.raw", case["read"])
        result["after_linear"] = dump(enhanced, f"{name}-after-linear.raw", case["linear"])
    else:
        result["error"] = values.index(1) if values.length() > 1 else ""
    image.delete()
    return result


folder = os.environ["JOB_DIR"]
with open(os.path.join(folder, "cases.json")) as handle:
    cases = json.load(handle)
results = {case["name"]: run_case(case) for case in cases}
with open(os.path.join(folder, "result.json"), "w") as handle:
    json.dump(results, handle)
