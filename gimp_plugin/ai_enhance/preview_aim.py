"""Where the preview first looks, in GIMP: the selection's centre, else the layer's most detailed area.

GEGL reads the layer reduced (each sample the mean of a block of pixels) as premultiplied brightness, so
transparent areas count as dark and flat; detail.py finds the window with the most gradient energy in it.
No GTK here: the real-GIMP tests call it headless.
"""

from __future__ import annotations

import math
from array import array

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
import detail  # noqa: E402
from gi.repository import Gegl, Gimp  # noqa: E402

GRID_FORMAT = "Y'aA float"  # premultiplied brightness and alpha, 4-byte floats


def brightness_grid(layer: Gimp.Drawable) -> detail.Grid:
    """The layer's brightness reduced to at most detail.GRID_SIDE samples on its longer side."""
    width, height = layer.get_width(), layer.get_height()
    scale = detail.grid_scale(width, height)
    grid_width, grid_height = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    rect = Gegl.Rectangle.new(0, 0, grid_width, grid_height)  # in the reduced coordinates
    samples = array("f", bytes(layer.get_buffer().get(rect, scale, GRID_FORMAT, Gegl.AbyssPolicy.CLAMP)))
    return detail.Grid(samples[0::2], grid_width, grid_height, 1.0 / scale)


def initial_centre(image: Gimp.Image, layer: Gimp.Drawable, window: int) -> tuple[float, float, str]:
    """The preview's first centre in layer coordinates, for a window of `window` layer pixels, and what
    it is ("the selection", "the most detailed area")."""
    if not Gimp.Selection.is_empty(image):
        touches, x, y, width, height = layer.mask_intersect()
        if touches:
            return x + width / 2, y + height / 2, "the selection"
    x, y = detail.most_detailed_centre(brightness_grid(layer), window, window)
    return x, y, "the most detailed area"
