"""The result canvas held as a band of rows, handed on as soon as no tile still to come can add to it.

Tiles are run row of tiles by row of tiles, and a tile only adds to the rows its core covers (shrunk
or not), so once a row of tiles is done every output row above the first one the next row of tiles
reaches is final. Those rows go to a ``sink`` (which converts them to the result's 8- or 16-bit samples)
and are dropped, so the float canvas never holds more than about two rows of tiles: a 48-megapixel
result needs 0.6 GB as floats but only a few tens of MB this way. The converted bands go on to
``ResultRows``: one whole array (``ArrayRows``), or a file written band by band (``imagefiles``), and then
the result never sits in memory whole at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

#: Receives final rows: ``sink(top, rows)`` with ``rows`` a float32 ``(C, n, W)`` CPU tensor for output
#: rows ``[top, top + n)``; called in order, every row exactly once. The rows are let go after: the
#: sink may change them in place.
RowSink = Callable[[int, torch.Tensor], None]


class ResultRows(Protocol):
    """Takes a result in its final samples band by band: ``begin(shape, dtype)`` once, with ``shape``
    ``(height, width, channels)``, then ``write(band)`` with ``n × width × channels`` bands of ``dtype``
    from the top down, every row exactly once."""

    def begin(self, shape: tuple[int, int, int], dtype: np.dtype) -> None: ...

    def write(self, band: np.ndarray) -> None: ...


class ArrayRows:
    """ResultRows that fill one whole array (``array``, there from ``begin`` on)."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self._top = 0

    def begin(self, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.array = np.empty(shape, dtype=dtype)

    def write(self, band: np.ndarray) -> None:
        assert self.array is not None
        whole = band.shape == self.array.shape and band.dtype == self.array.dtype
        if whole and band.flags.c_contiguous and band.flags.writeable:
            self.array = band  # one band is the whole result: taken as it is, not copied
        else:
            self.array[self._top : self._top + band.shape[0]] = band
        self._top += band.shape[0]


class BandCanvas:
    """Rows ``[top, top + held)`` of a ``height × width`` canvas, the rows above handed to the sink."""

    def __init__(self, height: int, width: int, sink: RowSink) -> None:
        self.height = height
        self.width = width
        self.sink = sink
        self.top = 0
        self._rows: torch.Tensor | None = None

    def region(self, start: int, end: int, channels: int) -> torch.Tensor:
        """Rows ``[start, end)`` to add to, as a view (allocated as zeros when first reached)."""
        if start < self.top:
            raise ValueError(f"row {start} was already handed on (the band starts at row {self.top})")
        needed = min(end, self.height) - self.top
        held = 0 if self._rows is None else self._rows.shape[1]
        if needed > held:
            grown = torch.empty(channels, needed, self.width)
            grown[:, held:].zero_()  # only the new rows: the held ones are copied over
            if self._rows is not None:
                grown[:, :held] = self._rows
            self._rows = grown
        assert self._rows is not None
        return self._rows[:, start - self.top : end - self.top]

    def hand_on(self, until: int) -> None:
        """Rows above ``until`` are final: give them to the sink and let them go."""
        until = min(until, self.height)
        if until <= self.top:
            return
        count = until - self.top
        if self._rows is None or self._rows.shape[1] < count:
            raise ValueError(f"rows {self.top}–{until} were never written")
        self.sink(self.top, self._rows[:, :count])
        rest = self._rows.shape[1] - count
        self._rows = self._rows[:, count:].clone() if rest else None  # the copy frees the handed rows
        self.top = until
