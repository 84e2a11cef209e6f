"""The dialog's preview panel: before and after of a crop side by side, the after computed by the backend.

The crop (preview.py decides which) is read in the layer's own format and sent with the dialog's
options, so 16-bit samples and alpha go through the same path as in the real run; GEGL converts the
result to 8-bit only for showing it, over a checkerboard where it is transparent.
"""

from __future__ import annotations

from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
import layer_io  # noqa: E402
import preview  # noqa: E402
import transport  # noqa: E402
from gi.repository import GdkPixbuf, Gegl, Gimp, GLib, Gtk  # noqa: E402
from settings import Settings  # noqa: E402

from image_enhancer.wire import ImageInfo, ModelInfo  # noqa: E402

SHOWN = layer_io.PixelFormat("R'G'B'A u8", 4, "u8")  # what GTK shows
DELAY_MS = 400  # changes closer together than this make one preview
CHECKS = (0x9A9A9A, 0x666666)  # the checkerboard behind transparent pixels
CHECK_SIZE = 8


def _centre(image: Gimp.Image, layer: Gimp.Layer) -> tuple[float, float, str]:
    """The selection's centre, else the image's, in layer coordinates, and which one it is."""
    if not Gimp.Selection.is_empty(image):
        touches, x, y, width, height = layer.mask_intersect()
        if touches:
            return x + width / 2, y + height / 2, "the selection's centre"
    _, offset_x, offset_y = layer.get_offsets()
    return image.get_width() / 2 - offset_x, image.get_height() / 2 - offset_y, "the image's centre"


def _pixbuf(rgba: bytes, width: int, height: int, shown_width: int, shown_height: int) -> GdkPixbuf.Pixbuf:
    """8-bit RGBA bytes as a picture of the shown size, over a checkerboard."""
    pixbuf = GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(rgba), GdkPixbuf.Colorspace.RGB, True, 8, width, height, width * 4
    )
    return pixbuf.composite_color_simple(
        shown_width, shown_height, GdkPixbuf.InterpType.BILINEAR, 255, CHECK_SIZE, *CHECKS
    )


def _to_shown(data: bytes, image: ImageInfo, babl: str) -> bytes:
    """Samples in the layer's format as 8-bit RGBA, converted by GEGL."""
    rect = Gegl.Rectangle.new(0, 0, image.width, image.height)
    buffer = Gegl.Buffer.new(babl, 0, 0, image.width, image.height)
    buffer.set(rect, babl, data)
    return bytes(buffer.get(rect, 1.0, SHOWN.babl, Gegl.AbyssPolicy.CLAMP))


class PreviewPanel(Gtk.Box):
    """Before | after, and a line saying what is shown. `schedule` after every change of the options;
    `on_done` is called (in GTK's thread) after each preview the backend finished."""

    def __init__(
        self, address: str, image: Gimp.Image, layer: Gimp.Layer, on_done: Callable[[], None]
    ) -> None:
        super().__init__(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self._image, self._layer, self._on_done = image, layer, on_done
        self._format = layer_io.pixel_format(layer)
        self._before, self._after = Gtk.Image(), Gtk.Image()
        pair = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        for picture in (self._before, self._after):
            picture.set_size_request(preview.PREVIEW_SIDE, preview.PREVIEW_SIDE)
            pair.pack_start(picture, False, False, 0)
        self._status = Gtk.Label(label="Preview")
        self._status.set_xalign(0.0)
        self._status.set_line_wrap(True)
        self._status.set_max_width_chars(60)
        self.pack_start(pair, False, False, 0)
        self.pack_start(self._status, False, False, 0)
        self._where = ""
        self._timer = 0
        self._runner = preview.PreviewRunner(
            lambda job, cancelled: preview.run_preview(address, job, cancelled),
            lambda outcome: GLib.idle_add(self._show, outcome),
        )

    def schedule(self, settings: Settings, model: ModelInfo) -> None:
        if self._timer:
            GLib.source_remove(self._timer)
        self._timer = GLib.timeout_add(DELAY_MS, self._start, settings, model)

    def stop(self) -> None:
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        self._runner.stop()

    def _start(self, settings: Settings, model: ModelInfo) -> bool:
        self._timer = 0
        try:
            scale = settings.scale
        except ValueError as error:
            self._status.set_text(str(error))
            return GLib.SOURCE_REMOVE
        centre_x, centre_y, self._where = _centre(self._image, self._layer)
        layer = self._layer
        crop = preview.plan_crop(layer.get_width(), layer.get_height(), centre_x, centre_y, scale)
        read, shown, out = crop.read, crop.shown_input, crop.shown_output
        before = layer_io.read_pixels(layer, shown.x, shown.y, shown.width, shown.height, SHOWN)
        self._before.set_from_pixbuf(_pixbuf(before, shown.width, shown.height, out.width, out.height))
        data = layer_io.read_pixels(layer, read.x, read.y, read.width, read.height, self._format)
        sent = ImageInfo(read.width, read.height, self._format.channels, self._format.sample_type)
        self._status.set_text("Preview: the AI backend is working on it…")
        self._runner.request(preview.PreviewJob(data, sent, settings.options(model), crop))
        return GLib.SOURCE_REMOVE

    def _show(self, outcome: preview.PreviewResult | transport.BackendError) -> bool:
        if isinstance(outcome, transport.BackendError):
            self._status.set_text(f"No preview: {outcome}")
            return GLib.SOURCE_REMOVE
        got = outcome.image
        self._after.set_from_pixbuf(
            _pixbuf(
                _to_shown(outcome.data, got, self._format.babl), got.width, got.height, got.width, got.height
            )
        )
        shown = outcome.job.crop.shown_input
        self._status.set_text(
            f"Preview of {shown.width} × {shown.height} px at {self._where}: before (left), after (right)."
        )
        self._on_done()
        return GLib.SOURCE_REMOVE
