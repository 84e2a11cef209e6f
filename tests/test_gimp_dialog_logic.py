"""What the dialog's preview and model list call, in the real GIMP 3.0 and 3.2 (headless: no dialog is
shown): the preview first looks at the selection's centre, else at the most detailed area of a real layer
read through GEGL (not the centre), on small and large layers; the layer's map thumbnail comes from GIMP;
the dialog's modules load in each GIMP's Python, where "Get more models…" lists face models with
their purpose, size and licence; and what the time estimate is asked for (channels, a varying alpha)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_gimp_e2e import gimp_root, gimp_version  # noqa: F401 - the chroot fixtures, shared

sys.path.insert(0, str(Path(__file__).resolve().parent / "gimp"))
from chroot_gimp import ChrootGimp, free_address  # noqa: E402

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

SCRIPT = """
import json, os, sys
plugin = {plugin!r}
sys.path[:0] = [plugin, os.path.join(plugin, "vendor")]
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
os.environ["MULTIDICT_NO_EXTENSIONS"] = "1"
from gi.repository import Gegl, Gimp
Gegl.init(None)
import preview_aim

def checker(width, height, square):
    return bytes(
        0 if (x // square + y // square) % 2 else 255
        for y in range(height) for x in range(width) for _ in range(3)
    )

def layer_with_patch(size, patch, square):
    image = Gimp.Image.new(size[0], size[1], Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "photo", size[0], size[1], Gimp.ImageType.RGB_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.fill(Gimp.FillType.WHITE)
    x, y, w, h = patch
    layer.get_buffer().set(Gegl.Rectangle.new(x, y, w, h), "R'G'B' u8", checker(w, h, square))
    layer.get_buffer().flush()
    return image, layer

out = {{}}
image, layer = layer_with_patch((400, 300), (300, 40, 64, 64), 8)
out["small"] = preview_aim.initial_centre(image, layer, 96)
image.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 200, 40, 60)
out["selection"] = preview_aim.initial_centre(image, layer, 96)
big_image, big = layer_with_patch((3000, 2000), (2400, 300, 256, 256), 32)
out["big"] = preview_aim.initial_centre(big_image, big, 96)
flat_image, flat = layer_with_patch((500, 200), (0, 0, 1, 1), 1)
flat.fill(Gimp.FillType.WHITE)
out["flat"] = preview_aim.initial_centre(flat_image, flat, 96)
thumb = layer.get_thumbnail(160, 120, Gimp.PixbufTransparency.SMALL_CHECKS)
out["thumbnail"] = [thumb.get_width(), thumb.get_height()]
import dialog, model_chooser, preview_panel  # the dialog's modules load in this GIMP's Python
out["loaded"] = True
import settings
from image_enhancer.wire import ModelInfo
face = ModelInfo("gfpgan-1.4", "GFPGAN", 1, False, False, license="Apache-2.0", description="Faces",
                 download_bytes=348632874, installable=True)
out["face_catalogue"] = [settings.catalogue_text(m, [], [face]) for m in settings.catalogue([], [face])]
out["face_choice"] = hasattr(model_chooser, "FaceModelChoice")
import layer_io
layers = Gimp.Image.new(3000, 2000, Gimp.ImageBaseType.RGB)
rgba = Gimp.Layer.new(layers, "a", 3000, 2000, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
layers.insert_layer(rgba, None, 0)
rgba.fill(Gimp.FillType.WHITE)
out["opaque"] = layer_io.alpha_varies(rgba)
layers.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 100, 100)  # the job reads the whole layer
rgba.get_buffer().set(Gegl.Rectangle.new(2500, 1500, 40, 30), "R'G'B'A u8", bytes(40 * 30 * 4))
rgba.get_buffer().flush()
out["holed"] = layer_io.alpha_varies(rgba)
out["kinds"] = [[k.channels, k.varying_alpha] for k in map(dialog.LayerKind.of, (rgba, layer))]
print("RESULT " + json.dumps(out))
"""


def test_the_preview_aims_at_the_selection_else_the_most_detail(
    gimp_root: Path, gimp_version: str  # noqa: F811
) -> None:
    gimp = ChrootGimp(gimp_root, free_address(), ["/usr/bin/false"], gimp_version)
    try:
        plugin = "/" + str(gimp.plugin.relative_to(gimp_root))
        run = subprocess.run(
            gimp.command(SCRIPT.format(plugin=plugin)), capture_output=True, text=True, timeout=300
        )
    finally:
        gimp.remove()
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    x, y, where = out["small"]
    assert where == "the most detailed area"
    assert 300 <= x <= 364 and 40 <= y <= 104, (x, y)  # inside the patch, far from the centre (200, 150)
    assert out["selection"] == [40.0, 230.0, "the selection"]
    x, y, where = out["big"]
    assert 2400 <= x <= 2656 and 300 <= y <= 556, (x, y)
    x, y, _ = out["flat"]
    assert abs(x - 250) <= 4 and abs(y - 100) <= 4  # nothing stands out: the centre
    assert out["thumbnail"] == [160, 120] and out["loaded"]
    face_line = "Faces (restores faces; used by Restore faces): 349 MB, licence Apache-2.0"
    assert out["face_catalogue"] == [face_line]
    assert out["face_choice"]
    # What the time estimate is asked for: channels, and whether the model makes the alpha in a second
    # pass (a transparent patch of 40 x 30 in 3000 x 2000 pixels, outside the selection, counts).
    assert out["opaque"] is False and out["holed"] is True
    assert out["kinds"] == [[4, True], [3, False]]
