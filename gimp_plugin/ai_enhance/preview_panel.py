"""The dialog's preview panel: before and after of a crop side by side, the after computed by the backend,
with a map of the layer to aim it and a 1:1 / 2:1 zoom.

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
gi.require_version("Gdk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
import filtered  # noqa: E402
import layer_io  # noqa: E402
import preview  # noqa: E402
import preview_aim  # noqa: E402
import transport  # noqa: E402
from gi.repository import Gdk, GdkPixbuf, Gegl, Gimp, GLib, Gtk  # noqa: E402
from newest import NewestOnly  # noqa: E402
from settings import Settings  # noqa: E402

from image_enhancer.wire import ImageInfo, ModelInfo  # noqa: E402

SHOWN = layer_io.PixelFormat("R'G'B'A u8", 4, "u8")  # what GTK shows
DELAY_MS = 400  # changes closer together than this make one preview
CHECKS = (0x9A9A9A, 0x666666)  # the checkerboard behind transparent pixels
CHECK_SIZE = 8
BLANK = 0x808080FF  # the cleared after picture
FRAME = 0xFF3030FF  # the preview's place on the map
MAP_SIDE = 160  # the map of the layer, on its longer side


def _pixbuf(
    rgba: bytes,
    width: int,
    height: int,
    shown_width: int,
    shown_height: int,
    interpolation: GdkPixbuf.InterpType = GdkPixbuf.InterpType.BILINEAR,
) -> GdkPixbuf.Pixbuf:
    """8-bit RGBA bytes as a picture of the shown size, over a checkerboard."""
    pixbuf = GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(rgba), GdkPixbuf.Colorspace.RGB, True, 8, width, height, width * 4
    )
    return pixbuf.composite_color_simple(shown_width, shown_height, interpolation, 255, CHECK_SIZE, *CHECKS)


def _blank(width: int, height: int) -> GdkPixbuf.Pixbuf:
    """The after picture while the backend works: cleared, so no stale result sits beside a new before."""
    pixbuf = GdkPixbuf.Pixbuf.new(GdkPixbuf.Colorspace.RGB, False, 8, max(1, width), max(1, height))
    pixbuf.fill(BLANK)
    return pixbuf


def _frame(pixbuf: GdkPixbuf.Pixbuf, x: int, y: int, width: int, height: int) -> None:
    """Draw a rectangle's outline into `pixbuf` (clipped to it), two pixels wide."""
    right, bottom = pixbuf.get_width(), pixbuf.get_height()
    x0, y0 = max(0, min(x, right - 1)), max(0, min(y, bottom - 1))
    x1, y1 = max(x0 + 1, min(x + width, right)), max(y0 + 1, min(y + height, bottom))
    line = 2
    for sx, sy, sw, sh in (
        (x0, y0, x1 - x0, min(line, y1 - y0)),
        (x0, max(y0, y1 - line), x1 - x0, min(line, y1 - y0)),
        (x0, y0, min(line, x1 - x0), y1 - y0),
        (max(x0, x1 - line), y0, min(line, x1 - x0), y1 - y0),
    ):
        pixbuf.new_subpixbuf(sx, sy, sw, sh).fill(FRAME)


def _to_shown(data: bytes, image: ImageInfo, babl: str) -> bytes:
    """Samples in the layer's format as 8-bit RGBA, converted by GEGL."""
    rect = Gegl.Rectangle.new(0, 0, image.width, image.height)
    buffer = Gegl.Buffer.new(babl, 0, 0, image.width, image.height)
    buffer.set(rect, babl, data)
    return bytes(buffer.get(rect, 1.0, SHOWN.babl, Gegl.AbyssPolicy.CLAMP))


class PreviewPanel(Gtk.Box):
    """Before | after, a map of the layer to move the preview, the zoom, and a line saying what is shown.
    `schedule` after every change of the options; `on_done` is called (in GTK's thread) after each
    preview the backend finished.

    The preview first looks at the selection, else at the layer's most detailed area (preview_aim.py).
    A click or drag on the map puts it there; dragging either picture moves it like a hand tool."""

    def __init__(
        self, address: str, image: Gimp.Image, layer: Gimp.Layer, on_done: Callable[[], None]
    ) -> None:
        super().__init__(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        self._image, self._layer, self._on_done = image, layer, on_done
        self._format = layer_io.pixel_format(layer)
        self._seen = filtered.LayerPixels(layer)  # with the layer's filters, as the real run reads it
        self._stopped = False
        self._centre: tuple[float, float] | None = None  # layer coordinates; None: not aimed yet
        self._where = ""
        self._zoom = 1
        self._crop: preview.Crop | None = None
        self._wanted: tuple[Settings, ModelInfo] | None = None
        self._drag_from: tuple[float, float] | None = None
        self._timer = 0

        self._before, self._after = Gtk.Image(), Gtk.Image()
        pair = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        for picture, tip in ((self._before, "Before"), (self._after, "After: what AI Enhance gives")):
            picture.set_size_request(preview.PREVIEW_SIDE, preview.PREVIEW_SIDE)
            pair.pack_start(self._draggable(picture, tip), False, False, 0)

        layer_width, layer_height = layer.get_width(), layer.get_height()
        self._map_scale = min(1.0, MAP_SIDE / max(layer_width, layer_height))
        map_width = max(1, round(layer_width * self._map_scale))
        map_height = max(1, round(layer_height * self._map_scale))
        self._map = layer.get_thumbnail(map_width, map_height, Gimp.PixbufTransparency.SMALL_CHECKS)
        self._map_image = Gtk.Image()
        map_box = Gtk.EventBox()
        map_box.add(self._map_image)
        map_box.set_halign(Gtk.Align.START)
        map_box.set_valign(Gtk.Align.START)
        map_box.set_tooltip_text("Click or drag to choose what the preview shows")
        map_box.add_events(Gdk.EventMask.BUTTON_PRESS_MASK | Gdk.EventMask.BUTTON1_MOTION_MASK)
        map_box.connect("button-press-event", self._map_clicked)
        map_box.connect("motion-notify-event", self._map_clicked)

        zoom_row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        zoom_row.pack_start(Gtk.Label(label="Zoom"), False, False, 0)
        first = None
        for zoom in preview.ZOOMS:
            button = Gtk.RadioButton.new_with_label_from_widget(first, f"{zoom}:1")
            button.set_tooltip_text(f"{zoom} screen pixel{'s' if zoom > 1 else ''} per result pixel")
            button.connect("toggled", self._zoom_toggled, zoom)
            zoom_row.pack_start(button, False, False, 0)
            first = first or button
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        side.pack_start(zoom_row, False, False, 0)
        self._status = Gtk.Label(label="Preview")
        self._status.set_xalign(0.0)
        self._status.set_yalign(0.0)
        self._status.set_line_wrap(True)
        self._status.set_max_width_chars(50)
        side.pack_start(self._status, False, False, 0)
        below = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        below.pack_start(map_box, False, False, 0)
        below.pack_start(side, True, True, 0)
        self.pack_start(pair, False, False, 0)
        self.pack_start(below, False, False, 0)
        self._runner = NewestOnly(
            lambda job, cancelled: preview.run_preview(address, job, cancelled),
            lambda outcome: GLib.idle_add(self._show, outcome),
            "The preview",
        )

    def _draggable(self, picture: Gtk.Image, tip: str) -> Gtk.EventBox:
        box = Gtk.EventBox()
        box.add(picture)
        box.set_tooltip_text(f"{tip}. Drag to move the preview.")
        box.add_events(Gdk.EventMask.BUTTON_PRESS_MASK | Gdk.EventMask.BUTTON_RELEASE_MASK)
        box.connect("button-press-event", self._drag_started)
        box.connect("button-release-event", self._drag_ended)
        return box

    def schedule(self, settings: Settings, model: ModelInfo) -> None:
        self._wanted = (settings, model)
        self._reschedule()

    def move_to(self, x: float, y: float, where: str = "the place chosen") -> None:
        """Aim the preview at (x, y) in layer coordinates."""
        self._centre, self._where = (x, y), where
        self._reschedule()

    def stop(self) -> None:
        """End the preview for good (the dialog closes): nothing of it runs afterwards."""
        self._stopped = True
        if self._timer:
            GLib.source_remove(self._timer)
            self._timer = 0
        self._runner.stop()
        self._seen.close()

    def _reschedule(self) -> None:
        if self._wanted is None or self._stopped:
            return
        if self._timer:
            GLib.source_remove(self._timer)
        self._timer = GLib.timeout_add(DELAY_MS, self._start)

    # --- moving and zooming ---------------------------------------------------------------------------

    def _map_clicked(self, _box: Gtk.EventBox, event: Gdk.EventButton | Gdk.EventMotion) -> bool:
        self.move_to(event.x / self._map_scale, event.y / self._map_scale)
        return True

    def _drag_started(self, _box: Gtk.EventBox, event: Gdk.EventButton) -> bool:
        self._drag_from = (event.x_root, event.y_root)
        return True

    def _drag_ended(self, _box: Gtk.EventBox, event: Gdk.EventButton) -> bool:
        if self._drag_from is not None and self._crop is not None:
            dx, dy = event.x_root - self._drag_from[0], event.y_root - self._drag_from[1]
            if abs(dx) + abs(dy) >= 2:
                self.move_to(*self._crop.moved(dx, dy))
        self._drag_from = None
        return True

    def _zoom_toggled(self, button: Gtk.RadioButton, zoom: int) -> None:
        if button.get_active() and zoom != self._zoom:
            self._zoom = zoom
            self._reschedule()

    def _draw_map(self, crop: preview.Crop) -> None:
        if self._map is None:
            return
        picture = self._map.copy()
        shown, s = crop.shown_input, self._map_scale
        _frame(picture, *(round(value * s) for value in (shown.x, shown.y, shown.width, shown.height)))
        self._map_image.set_from_pixbuf(picture)

    # --- computing and showing ------------------------------------------------------------------------

    def _start(self) -> bool:
        self._timer = 0
        assert self._wanted is not None
        settings, model = self._wanted
        try:
            scale = settings.scale
            options = settings.options(model)
        except ValueError as error:
            self._status.set_text(str(error))
            return GLib.SOURCE_REMOVE
        layer = self._layer
        if self._centre is None:
            x, y, self._where = preview_aim.initial_centre(
                self._image, layer, preview.shown_side(scale, self._zoom)
            )
            self._centre = (x, y)
        crop = preview.plan_crop(layer.get_width(), layer.get_height(), *self._centre, scale, self._zoom)
        self._crop, self._centre = crop, crop.centre  # clamped into the layer
        read, shown, out = crop.read, crop.shown_input, crop.shown_output
        screen_width, screen_height = out.width * crop.zoom, out.height * crop.zoom
        before = self._seen.read(shown.x, shown.y, shown.width, shown.height, SHOWN)
        self._before.set_from_pixbuf(_pixbuf(before, shown.width, shown.height, screen_width, screen_height))
        self._after.set_from_pixbuf(_blank(screen_width, screen_height))
        self._draw_map(crop)
        data = self._seen.read(read.x, read.y, read.width, read.height, self._format)
        sent = ImageInfo(read.width, read.height, self._format.channels, self._format.sample_type)
        self._status.set_text("Preview: the AI backend is working on it…")
        self._runner.request(preview.PreviewJob(data, sent, options, crop))
        return GLib.SOURCE_REMOVE

    def _show(self, outcome: preview.PreviewResult | transport.BackendError) -> bool:
        if self._stopped:  # a result that was already on its way when the dialog closed
            return GLib.SOURCE_REMOVE
        if isinstance(outcome, transport.BackendError):
            self._status.set_text(f"No preview: {outcome}")
            return GLib.SOURCE_REMOVE
        got, crop = outcome.image, outcome.job.crop
        zoom = crop.zoom
        self._after.set_from_pixbuf(
            _pixbuf(
                _to_shown(outcome.data, got, self._format.babl),
                got.width,
                got.height,
                got.width * zoom,
                got.height * zoom,
                GdkPixbuf.InterpType.NEAREST,  # at 2:1 each result pixel is a clean block
            )
        )
        shown = crop.shown_input
        self._status.set_text(
            f"{shown.width} × {shown.height} px of the layer around {self._where}, at {zoom}:1: before "
            "(left), after (right). Drag a picture or click the map to look elsewhere."
        )
        self._on_done()
        return GLib.SOURCE_REMOVE
