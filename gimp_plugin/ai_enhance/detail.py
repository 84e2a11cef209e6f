"""Where a layer has the most detail, without GIMP: the preview opens there when there is no selection.

The measure is gradient energy, the sum of |horizontal| + |vertical| differences of brightness, over
the window the preview shows. It is computed on a small grid of the layer (each sample the mean of a
block of pixels, as GEGL's reduced reads give it), so a flat sky scores nothing, sensor noise averages
away, and leaves, hair or text score high. Windows are compared through a summed-area table, so every
position costs the same few additions; among equal windows the one nearest the centre wins (a flat
layer previews at its centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GRID_SIDE = 256  # the grid's longer side, in samples: enough to find an area, a few milliseconds to scan


@dataclass(frozen=True)
class Grid:
    """Brightness samples of a layer, row by row; each stands for `cell` × `cell` layer pixels."""

    values: Sequence[float]
    width: int
    height: int
    cell: float

    def __post_init__(self) -> None:
        if len(self.values) != self.width * self.height or self.width < 1 or self.height < 1:
            raise ValueError(f"{len(self.values)} samples for a {self.width} x {self.height} grid")


def grid_scale(layer_width: int, layer_height: int, side: int = GRID_SIDE) -> float:
    """The reduction that brings the layer's longer side to at most `side` samples (1.0: none)."""
    return min(1.0, side / max(layer_width, layer_height))


def gradient_energy(grid: Grid) -> list[float]:
    """Each sample's |difference to the next sample right| + |to the next one down| (0 past the edges)."""
    v, w, h = grid.values, grid.width, grid.height
    energy = [0.0] * (w * h)
    for y in range(h):
        row = y * w
        below = row + w if y + 1 < h else -1
        for x in range(w):
            i = row + x
            e = abs(v[i + 1] - v[i]) if x + 1 < w else 0.0
            if below >= 0:
                e += abs(v[below + x] - v[i])
            energy[i] = e
    return energy


def _summed_area(values: Sequence[float], width: int, height: int) -> list[list[float]]:
    table = [[0.0] * (width + 1) for _ in range(height + 1)]
    for y in range(height):
        running = 0.0
        above, row = table[y], table[y + 1]
        for x in range(width):
            running += values[y * width + x]
            row[x + 1] = above[x + 1] + running
    return table


def best_window(
    values: Sequence[float], width: int, height: int, window_width: int, window_height: int
) -> tuple[int, int]:
    """The top-left corner of the `window_width` × `window_height` window (clamped to the grid) whose
    values sum highest; ties go to the window nearest the grid's centre."""
    ww, wh = max(1, min(window_width, width)), max(1, min(window_height, height))
    table = _summed_area(values, width, height)
    centre_x, centre_y = (width - ww) / 2, (height - wh) / 2
    best: tuple[float, float, int, int] | None = None
    for y in range(height - wh + 1):
        top, bottom = table[y], table[y + wh]
        for x in range(width - ww + 1):
            total = bottom[x + ww] - bottom[x] - top[x + ww] + top[x]
            key = (-round(total, 9), (x - centre_x) ** 2 + (y - centre_y) ** 2, y, x)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[3], best[2]


def most_detailed_centre(grid: Grid, window_width: float, window_height: float) -> tuple[float, float]:
    """The centre, in layer pixels, of the window of that size (layer pixels) with the most detail."""
    cells_x = max(1, round(window_width / grid.cell))
    cells_y = max(1, round(window_height / grid.cell))
    x, y = best_window(gradient_energy(grid), grid.width, grid.height, cells_x, cells_y)
    cells_x, cells_y = min(cells_x, grid.width), min(cells_y, grid.height)
    return (x + cells_x / 2) * grid.cell, (y + cells_y / 2) * grid.cell
