"""Tiled inference: a pure tile layout, split-and-blend around any ``op``, and out-of-memory back-off.

The result is defined as the whole image going through the network at once, exactly as a plain
forward pass does it (the network's own zero padding at the image edges). Each tile is a *core* (the
part of the image it is responsible for) plus at least ``pad`` pixels of context on every side that is
not an image edge: a window that would reach beyond the image is shifted inwards instead, so an
edge tile sees the edge just as the whole image does and no work is spent on invented pixels. All
windows of one layout have the same size, so they can be stacked into batches; an image smaller than
one window is a single tile that is exactly the plain forward pass. Neighbouring cores overlap by
``overlap`` pixels, and in the overlaps the outputs are blended with feathered weights that sum to
one, so a tiled result matches the untiled one and leaves no seam even for GAN models.

Only one batch of windows is on the device at a time; the output canvas stays on the CPU. When the
result is wanted smaller than the network makes it (×2 from a ×4 model), each tile's blended share is
reduced to that size as soon as the tile is done (``resample.Reduction``: exact, since the reduction is
linear), so the canvas has the size of the result, not of the network's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from image_enhancer.engine.bands import BandCanvas, RowSink
from image_enhancer.engine.resample import Reduction
from image_enhancer.engine.watch import JobCancelled, Watch, watching

# MIN_TILE is the smallest tile core the back-off goes down to; below it the context dominates the work.
from image_enhancer.request import MIN_TILE

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import ModelDescriptor

Op = Callable[[torch.Tensor], torch.Tensor]


#: Progress counts hundredths of a tile, so that a runtime can report from inside one window
#: (``engine.watch``) and a job of one large window still moves its bar.
PARTS_PER_TILE = 100


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels. ``window`` may reach beyond the image (mirrored)."""

    core_start: int
    core_end: int
    window_start: int
    window_end: int

    @property
    def core_size(self) -> int:
        return self.core_end - self.core_start

    @property
    def window_size(self) -> int:
        return self.window_end - self.window_start

    def output_crop(self, scale: int) -> slice:
        """Where the core's output lies inside the window's output."""
        offset = self.core_start - self.window_start
        return slice(offset * scale, (offset + self.core_size) * scale)


@dataclass(frozen=True)
class Tile:
    """A rectangular tile: one span per axis."""

    y: Span
    x: Span


#: Transforms one tile's output (``(C, h, w)``, on the runtime's device) before it is blended.
TileHook = Callable[[torch.Tensor, Tile], torch.Tensor]


def plan_axis(
    start: int,
    end: int,
    tile: int,
    overlap: int,
    pad: int,
    multiple: int = 1,
    min_size: int = 1,
    length: int | None = None,
) -> tuple[Span, ...]:
    """Cover ``[start, end)`` of an axis ``length`` pixels long (default ``end``) with equal cores of at
    most ``tile`` pixels overlapping by ``overlap`` or more.

    Every window is the core plus ``pad`` pixels each side (``pad`` rounded up to a multiple of
    ``multiple``), grown until its size is a multiple of ``multiple`` and at least ``min_size`` (what
    the network accepts), but no larger than the axis needs; then shifted to lie inside ``[0, length)``
    where it fits. Cores and windows start on multiples of ``multiple`` (absolute), so a network that
    folds pixels into groups (pixel-unshuffle) sees each tile on the same grid as the whole image; a
    core is clipped to the range where that grid makes it overhang.
    """
    length = end if length is None else length
    if end <= start or start < 0 or end > length:
        raise ValueError(f"cannot tile the range [{start}, {end}) of an axis of {length} pixels")
    if tile < 1 or pad < 0 or overlap < 0 or multiple < 1:
        raise ValueError(
            f"invalid tiling parameters tile={tile} overlap={overlap} pad={pad} multiple={multiple}"
        )
    # Plan in units of `multiple` pixels, then convert back.
    first, last = start // multiple, -(-end // multiple)
    units = last - first
    axis_units = -(-length // multiple)
    pad_units = -(-pad // multiple)
    core = max(1, min(tile // multiple, units))
    overlap = min(-(-overlap // multiple), core // 2)  # beyond half a core, tiles would overlap three deep
    count = 1 if core == units else 1 + math.ceil((units - core) / (core - overlap))
    if count > 1:  # the smallest equal cores that still cover the range: no work wasted on extra overlap
        core = max(core // 2 + 1, min(core, -(-(units + (count - 1) * overlap) // count)))
    # Context beyond the whole axis is never needed: a window the size of the axis sees all there is.
    window = max(min(core + 2 * pad_units, axis_units), core, -(-min_size // multiple))
    spans = []
    for i in range(count):
        unit = first + (round(i * (units - core) / (count - 1)) if count > 1 else 0)
        window_unit = max(0, min(unit - pad_units, axis_units - window))
        core_start, core_end = max(start, unit * multiple), min(end, (unit + core) * multiple)
        window_start = window_unit * multiple
        spans.append(Span(core_start, core_end, window_start, window_start + window * multiple))
    return tuple(spans)


def plan_tiles(
    top: int,
    left: int,
    bottom: int,
    right: int,
    tile: int,
    overlap: int,
    pad: int,
    multiple: int = 1,
    min_size: int = 1,
    height: int | None = None,
    width: int | None = None,
    widen: bool = False,
) -> list[Tile]:
    """The tiles covering ``[top, bottom) × [left, right)`` of a ``height × width`` image (default: the
    rectangle reaches its far edges), row by row: square cores of at most ``tile``, or with ``widen``,
    rows of windows no taller than those squares' and no larger in area, as wide as that allows, in
    as many rows as compute the fewest pixels (``_wider_rows``)."""
    rows = plan_axis(top, bottom, tile, overlap, pad, multiple, min_size, height)
    cols = plan_axis(left, right, tile, overlap, pad, multiple, min_size, width)
    if widen and len(cols) > 1:
        rows, cols = _wider_rows(rows, cols, (top, bottom, height), (left, right, width), tile,
                                 (overlap, pad, multiple, min_size))  # fmt: skip
    return [Tile(y, x) for y in rows for x in cols]


def _wider_rows(
    rows: tuple[Span, ...],
    cols: tuple[Span, ...],
    vertical: tuple[int, int, int | None],
    horizontal: tuple[int, int, int | None],
    tile: int,
    rules: tuple[int, int, int, int],
) -> tuple[tuple[Span, ...], tuple[Span, ...]]:
    """Of the square plan (``rows`` × ``cols``) and plans of as many rows or a few more, each row's
    windows as wide as the square window's area allows, the one computing the fewest pixels (then the
    one with fewest windows). Context is computed twice only where windows meet, so fewer, wider windows
    waste less: a 1024² image with room for 700² windows takes three full-width rows (1.12× its pixels
    computed) instead of four squares (1.16×). Rows stay no taller, so a row of windows' share of a
    result built in bands stays what its memory was sized for."""
    overlap, pad, multiple, min_size = rules
    area = (tile + 2 * pad) ** 2
    top, bottom, height = vertical
    left, right, width = horizontal

    def pixels(plan: tuple[tuple[Span, ...], tuple[Span, ...]]) -> tuple[int, int]:
        ys, xs = plan
        return sum(y.window_size for y in ys) * sum(x.window_size for x in xs), len(ys) * len(xs)

    best = (rows, cols)
    for count in range(len(rows), len(rows) + 4):
        row_tile = -(-(bottom - top + (count - 1) * overlap) // count)
        ys = plan_axis(top, bottom, row_tile, overlap, pad, multiple, min_size, height)
        if ys[0].window_size > rows[0].window_size:
            continue
        col_tile = area // ys[0].window_size - 2 * pad
        while col_tile >= MIN_TILE:
            xs = plan_axis(left, right, col_tile, overlap, pad, multiple, min_size, width)
            if ys[0].window_size * xs[0].window_size <= area:  # within the memory the squares had
                if pixels((ys, xs)) < pixels(best):
                    best = (ys, xs)
                break
            col_tile -= multiple
    return best


def blend_weights(
    spans: Sequence[Span], scale: int, feather: int, shape: str = "cosine"
) -> list[torch.Tensor]:
    """1-D weights over each span's core output that sum to one at every output pixel.

    A core's weight rises from its edges over ``feather`` output pixels (no ramp where it meets the end
    of the range), then all weights are divided by their sum. The 2-D weight of a tile is the product
    of its row and column weights, which again sums to one over all tiles.
    """
    if shape not in ("linear", "cosine"):
        raise ValueError(f"unknown feather shape {shape!r}; expected 'linear' or 'cosine'")
    origin = spans[0].core_start * scale
    total = spans[-1].core_end * scale - origin
    raw = []
    for span in spans:
        size = span.core_size * scale
        position = torch.arange(size, dtype=torch.float32) + 0.5
        ramp = torch.ones(size)
        if feather > 0:
            if span is not spans[0]:
                ramp = torch.minimum(ramp, position / feather)
            if span is not spans[-1]:
                ramp = torch.minimum(ramp, (size - position) / feather)
        if shape == "cosine":
            ramp = 0.5 - 0.5 * torch.cos(math.pi * ramp)
        raw.append(ramp)
    coverage = torch.zeros(total)
    for span, ramp in zip(spans, raw, strict=True):
        start = span.core_start * scale - origin
        coverage[start : start + ramp.numel()] += ramp
    weights = []
    for span, ramp in zip(spans, raw, strict=True):
        start = span.core_start * scale - origin
        weights.append(ramp / coverage[start : start + ramp.numel()])
    return weights


def reflect_indices(start: int, end: int, length: int) -> torch.Tensor:
    """Indices ``start..end-1`` mirrored into ``[0, length)`` (edge pixel not repeated), for any reach."""
    index = torch.arange(start, end)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


def window_of(image: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's input window from a ``(C, H, W)`` image, mirrored where it leaves the image (only
    when the network needs a larger or differently rounded input than the image itself)."""
    height, width = image.shape[-2:]
    y, x = tile.y, tile.x
    if y.window_start >= 0 and x.window_start >= 0 and y.window_end <= height and x.window_end <= width:
        return image[:, y.window_start : y.window_end, x.window_start : x.window_end]
    rows = reflect_indices(y.window_start, y.window_end, height)
    cols = reflect_indices(x.window_start, x.window_end, width)
    return image.index_select(1, rows).index_select(2, cols)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure on any device (CUDA/MPS raise a typed error, the ncnn runtime a
    MemoryError; PyTorch's CPU allocator raises a plain RuntimeError whose text is the only sign)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)


@dataclass(frozen=True)
class TileSettings:
    """How to cut an image for a network. ``pad``, ``multiple`` and ``min_size`` come from the model."""

    tile: int
    scale: int
    overlap: int = 8
    pad: int = 16
    multiple: int = 1
    min_size: int = 1
    batch_size: int = 1
    feather: str = "cosine"
    #: Windows may be wider than ``tile`` (``plan_tiles``): the engine's own tile size bounds their
    #: memory, which wider, lower rows keep to; a tile size the user chose is kept as it is.
    widen: bool = False

    def __post_init__(self) -> None:
        if self.tile < MIN_TILE:
            raise ValueError(f"tile size must be at least {MIN_TILE} pixels, got {self.tile}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    def plan(
        self, height: int, width: int, region: tuple[int, int, int, int] | None = None, tile: int = 0
    ) -> list[Tile]:
        """The tiles covering ``region`` (top, left, bottom, right; default: all) of a ``height × width``
        image, with cores of ``tile`` (default: this plan's; a smaller one, after running out of memory,
        is kept square: the back-off then knows each core's size from it)."""
        top, left, bottom, right = region or (0, 0, height, width)
        widen = self.widen and tile in (0, self.tile)
        return plan_tiles(top, left, bottom, right, tile or self.tile, self.overlap, self.pad, self.multiple,
                          self.min_size, height, width, widen)  # fmt: skip


class Tiler:
    """Runs ``op`` over an image tile batch by tile batch and blends the results.

    ``op`` maps a float32 batch ``(N, C, h, w)`` on the CPU to ``(N, C', h·scale, w·scale)`` on any
    device. On out-of-memory the batch is split, and a single tile that still does not fit is rendered
    as smaller tiles (half the size, same context), which then becomes the size for the rest of the run.
    """

    def __init__(
        self,
        op: Op,
        settings: TileSettings,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.op = op
        self.settings = settings
        self.tile = settings.tile
        self.batch_size = settings.batch_size
        self._progress = progress
        self._cancelled = cancelled
        self._done = 0
        self._total = 0

    def count_tiles(self, height: int, width: int) -> int:
        """How many tiles (progress units) an image of this size takes at the current tile size."""
        return len(self._plan((height, width), 0, 0, height, width, self.tile))

    def run(
        self,
        image: torch.Tensor,
        progress_offset: int = 0,
        progress_total: int | None = None,
        size: tuple[int, int] | None = None,
        per_tile: TileHook | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        """Process a ``(C, H, W)`` float32 CPU image; returns ``(C', H·scale, W·scale)`` on the CPU, or
        ``(C', *size)`` when ``size`` is given and smaller: the whole result shrunk as ``colour.resize``
        does it (antialiased bicubic, not clamped), built tile by tile without the full-scale canvas.

        ``per_tile(output, tile)`` transforms each tile's output before it is blended (channel folding,
        per-pixel fixes); it must keep the output's height and width. With ``sink``, the result is not
        returned but handed to it in bands of final rows (``bands.BandCanvas``): never held whole.
        Progress reports ``progress_offset + tiles done`` out of ``progress_total`` (default: this
        image's tile count), so several runs can share one progress range, in PARTS_PER_TILE parts
        per tile: a runtime reports its share of the tiles it is running as it goes.
        """
        height, width = image.shape[-2:]
        self._done = progress_offset
        self._total = (
            progress_total
            if progress_total is not None
            else progress_offset + self.count_tiles(height, width)
        )
        full = (height * self.settings.scale, width * self.settings.scale)
        reduction = None
        if size is not None and tuple(size) != full:
            if size[0] > full[0] or size[1] > full[1]:
                raise ValueError(f"the tiler only shrinks its {full[1]}×{full[0]} result, not to {size}")
            reduction = Reduction.bicubic(full, (size[0], size[1]))
        if progress_offset == 0:  # the network is starting: the caller's stage changes now, not after a batch
            self._report(0.0)
        # A runtime may keep what one window allocated for the next until the pass ends (ncnn's pools).
        with getattr(self.op, "windows", nullcontext)():
            return self._render(image, 0, 0, height, width, self.tile, report=True, reduction=reduction,
                                per_tile=per_tile, sink=sink)

    def _plan(
        self, size: tuple[int, int], top: int, left: int, bottom: int, right: int, tile: int
    ) -> list[Tile]:
        return self.settings.plan(*size, (top, left, bottom, right), tile)

    def _render(
        self,
        image: torch.Tensor,
        top: int,
        left: int,
        bottom: int,
        right: int,
        tile: int,
        report: bool,
        reduction: Reduction | None = None,
        per_tile: TileHook | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        s = self.settings
        tiles = self._plan(image.shape[-2:], top, left, bottom, right, tile)
        rows = list(dict.fromkeys(t.y for t in tiles))
        cols = list(dict.fromkeys(t.x for t in tiles))
        feather = s.overlap * s.scale
        row_weight = dict(zip(rows, blend_weights(rows, s.scale, feather, s.feather), strict=True))
        col_weight = dict(zip(cols, blend_weights(cols, s.scale, feather, s.feather), strict=True))
        canvas: torch.Tensor | None = None
        whole = ((bottom - top) * s.scale, (right - left) * s.scale)
        out_size = reduction.out_size if reduction is not None else whole
        band = BandCanvas(*out_size, sink) if sink is not None else None

        def first_row(span: Span) -> int:
            """The first output row a tile of this row of tiles adds to: rows above it are final once the
            tiles before it are done."""
            if reduction is not None:
                return reduction.rows.span(span.core_start * s.scale, span.core_end * s.scale)[0]
            return (span.core_start - top) * s.scale

        def rows(y0: int, height: int, channels: int) -> torch.Tensor:
            """Output rows ``[y0, y0 + height)`` of the canvas or the band, to add to."""
            nonlocal canvas
            if band is not None:
                return band.region(y0, y0 + height, channels)
            if canvas is None:
                canvas = torch.zeros(channels, *out_size)
            return canvas[:, y0 : y0 + height]

        index = 0
        while index < len(tiles):
            if self._cancelled is not None and self._cancelled():
                raise JobCancelled("the job was cancelled")
            batch = tiles[index : index + self.batch_size]
            if report:
                share = len(batch)  # the tiles this call stands for
                with watching(Watch(self._cancelled, lambda part: self._report(part * share))):  # noqa: B023
                    outputs = self._cores(image, batch, tile)
            else:  # a region re-rendered in smaller tiles: still inside the watched call of its tile
                outputs = self._cores(image, batch, tile)
            for t, core in zip(batch, outputs, strict=True):
                if per_tile is not None:
                    core = per_tile(core, t)
                if len(tiles) == 1 and reduction is None:  # one tile covers the region: nothing to blend
                    canvas = core.cpu()
                    continue
                if reduction is not None:  # this tile's share of the result, shrunk before it is kept
                    share, y0, x0 = reduction.apply(
                        core, t.y.core_start * s.scale, t.x.core_start * s.scale,
                        row_weight[t.y].to(core.device), col_weight[t.x].to(core.device),
                    )
                    rows(y0, share.shape[1], share.shape[0])[:, :, x0 : x0 + share.shape[2]] += share.cpu()
                    continue
                weight = row_weight[t.y].to(core.device).view(-1, 1) * col_weight[t.x].to(core.device).view(
                    1, -1
                )
                y0, x0 = (t.y.core_start - top) * s.scale, (t.x.core_start - left) * s.scale
                target = rows(y0, core.shape[1], core.shape[0])[:, :, x0 : x0 + core.shape[2]]
                if core.device.type == "cpu":
                    target.addcmul_(core, weight)
                else:
                    target += (core * weight).cpu()
            index += len(batch)
            if band is not None and canvas is None:  # (a single tile went to `canvas` unblended)
                band.hand_on(first_row(tiles[index].y) if index < len(tiles) else band.height)
            if report:
                self._done += len(batch)
                self._report(0.0)
        if sink is not None:
            if canvas is not None:  # a single tile, nothing blended: handed on as it is
                sink(0, canvas)
            return None
        assert canvas is not None  # a non-empty region always has a tile
        return canvas

    def _report(self, tiles_in_progress: float) -> None:
        if self._progress is not None:
            done = round((self._done + tiles_in_progress) * PARTS_PER_TILE)
            self._progress(done, self._total * PARTS_PER_TILE)

    def _cores(self, image: torch.Tensor, batch: list[Tile], tile: int) -> list[torch.Tensor]:
        """The core outputs of a batch of tiles, splitting the work on out-of-memory."""
        s = self.settings
        first = batch[0]
        if len(batch) == 1 and self.tile < s.tile and max(first.y.core_size, first.x.core_size) > self.tile:
            # An earlier tile already ran out of memory at this size: go straight to smaller tiles.
            return [
                self._render(
                    image,
                    first.y.core_start,
                    first.x.core_start,
                    first.y.core_end,
                    first.x.core_end,
                    self.tile,
                    report=False,
                )
            ]
        try:
            windows = torch.stack([window_of(image, t) for t in batch]) if len(batch) > 1 else (
                window_of(image, batch[0])[None]  # a view: the runtime makes the one copy it needs
            )
            output = self.op(windows)
            return [
                output[i, :, t.y.output_crop(s.scale), t.x.output_crop(s.scale)] for i, t in enumerate(batch)
            ]
        except (RuntimeError, torch.OutOfMemoryError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) > 1:
            half = len(batch) // 2
            self.batch_size = max(1, half)
            return self._cores(image, batch[:half], tile) + self._cores(image, batch[half:], tile)
        smaller = min(tile, max(batch[0].y.core_size, batch[0].x.core_size)) // 2
        if smaller < MIN_TILE:
            raise MemoryError(
                f"out of memory even with {tile}-pixel tiles; free memory or choose a smaller model"
            )
        self.tile = min(self.tile, smaller)
        t = batch[0]
        return [
            self._render(
                image, t.y.core_start, t.x.core_start, t.y.core_end, t.x.core_end, smaller, report=False
            )
        ]


#: Context a tile gets when the model's descriptor does not say (tile_pad = 0).
DEFAULT_PAD = 16
#: Overlap between neighbouring tile cores, blended with feathered weights, in input pixels.
DEFAULT_OVERLAP = 8


def context_pad(descriptor: ModelDescriptor) -> int:
    """The context each side of a tile for this model."""
    return descriptor.tile_pad or DEFAULT_PAD


def auto_tile(
    budget_bytes: int,
    bytes_per_pixel: float,
    pad: int,
    batch_size: int = 1,
    largest: int = 1024,
    row_bytes: float = 0.0,
) -> int:
    """The largest tile core whose batch of windows fits ``budget_bytes`` at ``bytes_per_pixel``
    (the network's peak working memory per input pixel), rounded down to a multiple of 8, together
    with ``row_bytes`` per input row of a window's height (a result built in bands holds about one
    row of tiles of it as floats: at ×4 of a 12-megapixel photo, 0.8 GB for cores of 1024)."""
    a = max(bytes_per_pixel, 1.0) * batch_size
    # The window w with a·w² + row_bytes·w = budget.
    window = int((-row_bytes + math.sqrt(row_bytes**2 + 4 * a * max(budget_bytes, 0))) / (2 * a))
    tile = (window - 2 * pad) // 8 * 8
    return max(MIN_TILE, min(largest, tile))
