"""What a person sees of a layer: its pixels with its non-destructive filters applied.

A layer can carry non-destructive filters (GIMP 3.0 and 3.2: `Gimp.Drawable.get_filters()`); its buffer
holds the pixels under them, so reading it would enhance (and preview) a look the person does not see,
and the result, above the original, would hide the filters. So when a layer has visible filters, it is
copied into a temporary image of the same size, precision and colour profile, the copy's filters are
merged there (`Gimp.Drawable.merge_filters`), and the pixels are read from the copy. The original layer
and its image are never touched: no undo step, not made dirty. The new layer holds the filtered look,
enhanced; the original keeps its filters, live.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
import layer_io  # noqa: E402
from gi.repository import Gimp  # noqa: E402


def visible_filters(layer: Gimp.Drawable) -> list[str]:
    """The names of the layer's visible non-destructive filters ([] on a GIMP without them)."""
    get_filters = getattr(layer, "get_filters", None)
    if get_filters is None:
        return []
    return [item.get_name() for item in get_filters() or [] if item.get_visible()]


class LayerPixels:
    """Reads a layer's pixels as they look: the layer itself when it has no visible filters, else a
    temporary copy with them merged. `close()` (or leaving the `with` block) deletes the copy."""

    def __init__(self, layer: Gimp.Drawable) -> None:
        self.layer = layer
        self.filters = visible_filters(layer)
        self._copy_image: Gimp.Image | None = None
        self._source: Gimp.Drawable = layer
        self._dx = self._dy = 0

    def _merged_copy(self) -> None:
        image = self.layer.get_image()
        copy_image = Gimp.Image.new_with_precision(
            image.get_width(), image.get_height(), image.get_base_type(), image.get_precision()
        )
        self._copy_image = copy_image
        copy_image.undo_disable()
        profile = image.get_color_profile()
        if profile is not None:  # the copy keeps the layer's own values, in its own space
            copy_image.set_color_profile(profile)
        copy = Gimp.Layer.new_from_drawable(self.layer, copy_image)
        copy_image.insert_layer(copy, None, 0)
        _, x, y = self.layer.get_offsets()
        copy.set_offsets(x, y)
        copy.merge_filters()
        _, copy_x, copy_y = copy.get_offsets()  # a filter that draws outside the layer grows it
        self._source, self._dx, self._dy = copy, x - copy_x, y - copy_y

    def read(self, x: int, y: int, width: int, height: int, fmt: layer_io.PixelFormat) -> bytes:
        """The pixels a person sees in a rectangle of the layer (layer coordinates), in `fmt`."""
        if self.filters and self._copy_image is None:
            self._merged_copy()
        return layer_io.read_pixels(self._source, x + self._dx, y + self._dy, width, height, fmt)

    def close(self) -> None:
        if self._copy_image is not None:
            self._copy_image.delete()
            self._copy_image = None
            self._source, self._dx, self._dy = self.layer, 0, 0

    def __enter__(self) -> LayerPixels:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
