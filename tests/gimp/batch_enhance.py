"""Runs inside GIMP (python-fu-eval batch): build an image from raw samples, run AI Enhance, dump the result.

The test writes `job.json` and `input.raw` into a folder and sets JOB_DIR before exec'ing this file.
Everything the test checks is written back as raw samples plus `result.json`, so nothing here
compares pixels: the test does that on the host with numpy.
"""

import json
import os

from gi.repository import Gegl, Gimp, Gio

PRECISIONS = {
    "u8": Gimp.Precision.U8_NON_LINEAR,
    "u16": Gimp.Precision.U16_NON_LINEAR,
    "f32": Gimp.Precision.FLOAT_NON_LINEAR,
}
COMPONENTS = {"u8": "u8", "u16": "u16", "f32": "float"}
MODELS = {3: "R'G'B'", 4: "R'G'B'A", 1: "Y'", 2: "Y'A"}
TYPES = {3: Gimp.ImageType.RGB_IMAGE, 4: Gimp.ImageType.RGBA_IMAGE}


def babl(channels: int, sample: str) -> str:
    return f"{MODELS[channels]} {COMPONENTS[sample]}"


def dump(drawable, name: str, fmt: str) -> dict:
    width, height = drawable.get_width(), drawable.get_height()
    rect = Gegl.Rectangle.new(0, 0, width, height)
    data = drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    with open(os.path.join(out_dir, name), "wb") as handle:
        handle.write(bytes(data))
    _, x, y = drawable.get_offsets()
    return {"file": name, "width": width, "height": height, "x": x, "y": y, "format": fmt}


out_dir = os.environ["JOB_DIR"]
with open(os.path.join(out_dir, "job.json")) as handle:
    job = json.load(handle)
width, height, channels, sample = job["width"], job["height"], job["channels"], job["sample_type"]
fmt = babl(channels, sample)

canvas_width, canvas_height = job.get("canvas", [width, height])
image = Gimp.Image.new_with_precision(canvas_width, canvas_height, Gimp.ImageBaseType.RGB, PRECISIONS[sample])
background = Gimp.Layer.new(
    image, "background", canvas_width, canvas_height, TYPES[3], 100.0, Gimp.LayerMode.NORMAL
)
image.insert_layer(background, None, 0)
background.fill(Gimp.FillType.WHITE)
layer = Gimp.Layer.new(image, "photo", width, height, TYPES[channels], 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.set_offsets(*job.get("offset", [0, 0]))
with open(os.path.join(out_dir, "input.raw"), "rb") as handle:
    layer.get_buffer().set(Gegl.Rectangle.new(0, 0, width, height), fmt, handle.read())
layer.get_buffer().flush()
if "ellipse" in job:
    x, y, w, h = job["ellipse"]
    image.select_ellipse(Gimp.ChannelOps.REPLACE, x, y, w, h)
    Gimp.Selection.feather(image, job.get("feather", 0.0))
target = layer
if job.get("group"):  # the photo inside a layer group, and the group selected
    target = Gimp.GroupLayer.new(image, "group")
    image.insert_layer(target, None, 0)
    image.reorder_item(layer, target, 0)
if "text" in job:  # a text layer above the photo, selected
    target = Gimp.TextLayer.new(image, job["text"], Gimp.context_get_font(), 24.0, Gimp.Unit.pixel())
    image.insert_layer(target, None, 0)
if "vector" in job:  # GIMP 3.2: a filled ellipse as a vector layer above the photo, selected
    path = Gimp.Path.new(image, "shape")
    image.insert_path(path, None, 0)
    path.bezier_stroke_new_ellipse(*job["vector"], 0.0)
    target = Gimp.VectorLayer.new(image, path)
    image.insert_layer(target, None, 0)
if "link" in job:  # GIMP 3.2: a link layer showing an image file from the job folder, selected
    target = Gimp.LinkLayer.new(image, Gio.File.new_for_path(os.path.join(out_dir, job["link"])))
    image.insert_layer(target, None, 0)
    target.set_offsets(*job.get("link_offset", [0, 0]))
for operation in job.get("filters", []):  # non-destructive filters on the selected layer
    target.append_filter(Gimp.DrawableFilter.new(target, operation, operation))
rendered = any(key in job for key in ("text", "vector", "link"))  # a layer GIMP draws from a description
target_before = dump(target, "target_before.raw", babl(4, sample)) if rendered else None
image.clean_all()

procedure = Gimp.get_pdb().lookup_procedure("python-fu-ai-enhance")
config = procedure.create_config()
config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [target])
for key, value in job.get("arguments", {}).items():
    config.set_property(key, value)
values = procedure.run(config)
status = values.index(0)
selected = image.get_selected_drawables()
again = None
if job.get("again") and status == Gimp.PDBStatusType.SUCCESS:  # run once more on what is selected now
    config.set_core_object_array("drawables", selected)
    again_values = procedure.run(config)
    again = {"status": again_values.index(0).value_nick}
    if again_values.index(0) != Gimp.PDBStatusType.SUCCESS:
        again["error"] = again_values.index(1) if again_values.length() > 1 else ""

RASTERIZABLE = getattr(Gimp, "Rasterizable", ())  # GIMP 3.2: text, vector and link layers
result = {
    "status": status.value_nick,
    "image": [image.get_width(), image.get_height()],
    "precision": image.get_precision().value_nick,
    "layers": [
        [item.get_name(), item.get_width(), item.get_height(), *item.get_offsets()[1:]]
        for item in image.get_layers()
    ],
    "dirty": image.is_dirty(),
    "original": dump(layer, "original.raw", fmt),
    "target_is_text": target.is_text_layer(),
    "target_before": target_before,
    # True once GIMP turned the layer into plain pixels; None before GIMP 3.2.
    "target_rasterized": target.is_rasterized() if isinstance(target, RASTERIZABLE) else None,
    "target_kind": type(target).__name__,
    "target_filters": [item.get_name() for item in target.get_filters()],
    "selected": [[item.get_name(), item.is_layer()] for item in selected],
    "again": again,
}
if status == Gimp.PDBStatusType.SUCCESS:
    new_layer = values.index(1)
    result["new_layer"] = dump(new_layer, "new_layer.raw", babl(4, sample) if rendered else fmt)
    result["new_layer"]["name"] = new_layer.get_name()
    result["background"] = dump(background, "background.raw", babl(3, sample))
    mask = new_layer.get_mask()
    if mask is not None:
        result["mask"] = dump(mask, "mask.raw", f"Y {COMPONENTS[sample]}")
        result["selection"] = dump(image.get_selection(), "selection.raw", f"Y {COMPONENTS[sample]}")
    visible = Gimp.Layer.new_from_visible(image, image, "visible")
    result["visible"] = dump(visible, "visible.raw", babl(3, sample))
else:
    result["error"] = values.index(1) if values.length() > 1 else ""
with open(os.path.join(out_dir, "result.json"), "w") as handle:
    json.dump(result, handle)
