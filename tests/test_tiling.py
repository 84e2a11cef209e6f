"""Tile geometry, split-and-blend and out-of-memory back-off, with tiny models whose weights don't matter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from image_enhancer.engine.tiling import (
    JobCancelled,
    Tiler,
    TileSettings,
    auto_tile,
    blend_weights,
    is_out_of_memory,
    plan_axis,
    plan_tiles,
    reflect_indices,
    window_of,
)


def nearest_x2(batch: torch.Tensor) -> torch.Tensor:
    return F.interpolate(batch, scale_factor=2, mode="nearest")


class ConvNet(torch.nn.Module):
    """A random ×2 network with a receptive-field radius of ``depth`` pixels (one per 3×3 conv)."""

    def __init__(self, depth: int = 4, scale: int = 2) -> None:
        super().__init__()
        torch.manual_seed(1)
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()]
        layers += [torch.nn.Conv2d(8, 3 * scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale)]
        self.body = torch.nn.Sequential(*layers)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def untiled(net: torch.nn.Module, image: torch.Tensor, multiple: int = 1, scale: int = 2) -> torch.Tensor:
    """The definition the tiler must reproduce: the whole image through the network at once (mirrored
    at its far edges to whole groups of ``multiple`` pixels, as a network that needs them must be fed)."""
    height, width = image.shape[-2:]
    grown = F.pad(image[None], (0, -width % multiple, 0, -height % multiple), mode="reflect")
    return net(grown)[0, :, : height * scale, : width * scale]


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "pad", "multiple", "min_size"),
    [
        (100, 32, 8, 4, 1, 1),
        (90, 48, 8, 10, 1, 1),
        (33, 64, 8, 5, 1, 1),
        (257, 64, 16, 24, 4, 1),
        (17, 16, 8, 0, 2, 2),
        (5, 16, 4, 3, 1, 64),
        (1000, 200, 0, 0, 1, 1),
        (49, 48, 8, 2, 8, 1),
        (37, 17, 8, 48, 2, 2),
        (23, 16, 4, 5, 4, 4),
    ],
)
def test_plan_axis_covers_range_with_equal_windows(length, tile, overlap, pad, multiple, min_size):
    spans = plan_axis(0, length, tile, overlap, pad, multiple, min_size)
    assert spans[0].core_start == 0 and spans[-1].core_end == length
    for before, after in zip(spans, spans[1:], strict=False):
        assert after.core_start <= before.core_end  # no gap
        assert before.core_end - after.core_start >= min(overlap, spans[0].core_size // 2) - 1
    sizes = {s.window_size for s in spans}
    assert len(sizes) == 1  # one window shape, so tiles can be batched
    (size,) = sizes
    assert size % multiple == 0 and size >= min_size
    whole_axis = -(-length // multiple) * multiple
    for s in spans:
        assert s.window_start % multiple == 0  # the whole image's pixel grid
        assert s.window_start >= 0 and (s.window_end <= whole_axis or s.window_start == 0)
        # Context on every side that is not the image edge; a window never reaches past the image
        # unless the network needs a larger input than the image.
        assert s.window_start <= max(0, s.core_start - pad)
        assert s.window_end >= min(whole_axis, s.core_end + pad)
        assert s.core_size <= max(min(tile, length), multiple)
        if multiple == 1:
            assert s.core_size == spans[0].core_size
    assert size <= max(spans[0].core_size + 2 * -(-pad // multiple) * multiple, whole_axis, min_size) or (
        size == -(-min_size // multiple) * multiple
    )


def test_a_window_at_the_edge_is_shifted_inwards_not_mirrored():
    first, middle, last = plan_axis(0, 100, 40, 8, 6)
    assert (first.window_start, first.window_end) == (0, first.core_size + 12)
    assert (middle.window_start, middle.window_end) == (middle.core_start - 6, middle.core_end + 6)
    assert last.window_end == 100 and last.window_size == first.window_size


def test_an_image_smaller_than_a_window_is_one_window_of_its_own_size():
    (span,) = plan_axis(0, 70, 128, 8, 32)
    assert (span.window_start, span.window_end) == (0, 70)
    (span,) = plan_axis(0, 37, 128, 8, 32, multiple=4)  # the network needs whole groups of 4
    assert (span.window_start, span.window_end) == (0, 40)


def test_plan_tiles_offsets_a_sub_rectangle():
    tiles = plan_tiles(10, 20, 50, 100, tile=32, overlap=4, pad=3)
    assert {t.y.core_start for t in tiles} == {10, 28}  # two cores of 22, not 32: no wasted overlap
    assert min(t.x.core_start for t in tiles) == 20 and max(t.x.core_end for t in tiles) == 100


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("length", "tile", "overlap", "scale"), [(100, 32, 8, 2), (90, 48, 8, 4), (40, 40, 8, 1)]
)
def test_blend_weights_sum_to_one(shape, length, tile, overlap, scale):
    spans = plan_axis(0, length, tile, overlap, pad=0)
    weights = blend_weights(spans, scale, overlap * scale, shape)
    total = torch.zeros(length * scale)
    for span, w in zip(spans, weights, strict=True):
        assert w.numel() == span.core_size * scale and bool((w > 0).all())
        total[span.core_start * scale : span.core_end * scale] += w
    torch.testing.assert_close(total, torch.ones_like(total))


def test_blend_weights_feather_towards_neighbours_only():
    spans = plan_axis(0, 100, 40, 10, pad=0)
    weights = blend_weights(spans, 1, 10, "linear")
    assert weights[0][0] == 1 and weights[-1][-1] == 1  # image edges are not faded
    assert weights[0][-1] < 0.1 and weights[1][0] < 0.1  # inner edges are


@pytest.mark.parametrize(("start", "end", "length"), [(-5, 12, 10), (-3, 3, 4), (0, 9, 9), (-20, 30, 7)])
def test_reflect_indices_match_numpy_reflect(start, end, length):
    base = np.arange(length)
    reach = max(-start, end - length, 0)
    padded = np.pad(base, reach, mode="reflect") if reach < length else None
    got = reflect_indices(start, end, length).numpy()
    if padded is not None:
        np.testing.assert_array_equal(got, padded[start + reach : end + reach])
    assert got.min() >= 0 and got.max() < length


def test_reflect_indices_of_a_single_pixel():
    assert reflect_indices(-3, 4, 1).tolist() == [0] * 7


def test_window_of_mirrors_only_what_the_network_needs_beyond_the_image():
    image = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 6, 7)
    (tile,) = plan_tiles(0, 0, 6, 7, tile=64, overlap=0, pad=2)
    torch.testing.assert_close(window_of(image, tile), image)  # the image itself, no invented context
    (tile,) = plan_tiles(0, 0, 6, 7, tile=64, overlap=0, pad=2, min_size=10)
    expected = F.pad(image[None], (0, 3, 0, 4), mode="reflect")[0]
    torch.testing.assert_close(window_of(image, tile), expected)


@pytest.mark.parametrize(("tile", "pad", "batch"), [(16, 0, 1), (24, 3, 2), (40, 5, 3), (200, 2, 1)])
def test_nearest_neighbour_op_is_reproduced_exactly(tile, pad, batch):
    torch.manual_seed(0)
    image = torch.rand(3, 61, 47)
    tiler = Tiler(nearest_x2, TileSettings(tile=tile, scale=2, overlap=6, pad=pad, batch_size=batch))
    torch.testing.assert_close(tiler.run(image), nearest_x2(image[None])[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("feather", ["linear", "cosine"])
@pytest.mark.parametrize(("tile", "multiple"), [(16, 1), (24, 4), (32, 1)])
def test_tiled_equals_untiled_with_enough_context(feather, tile, multiple, widen):
    net = ConvNet(depth=4)
    image = torch.rand(3, 50, 37, generator=torch.Generator().manual_seed(3))
    settings = TileSettings(
        tile=tile, scale=2, overlap=4, pad=4, multiple=multiple, feather=feather, widen=widen
    )
    expected = untiled(net, image, multiple)
    torch.testing.assert_close(Tiler(net, settings).run(image), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("height", "width", "tile", "pad", "multiple"),
    [(1024, 1024, 664, 18, 1), (768, 768, 680, 18, 1), (512, 512, 232, 32, 1), (300, 1000, 96, 10, 4),
     (3000, 4000, 384, 18, 1), (500, 500, 152, 32, 1), (40, 900, 16, 2, 1)],
)  # fmt: skip
def test_wider_rows_compute_fewer_pixels_in_windows_no_larger(height, width, tile, pad, multiple):
    """Widened, a plan's windows are no taller and no larger in area than the square ones (the memory
    they were sized for), all alike (one shape to compile, windows that stack into batches), cover the
    image, and compute no more pixels: 1024² with room for 700² windows, 3 rows instead of 2×2 squares."""

    def pixels(plan: list) -> int:
        return sum(t.y.window_size * t.x.window_size for t in plan)

    square = plan_tiles(0, 0, height, width, tile, 8, pad, multiple)
    wide = plan_tiles(0, 0, height, width, tile, 8, pad, multiple, widen=True)
    top = -(-pad // multiple) * multiple
    assert len({(t.y.window_size, t.x.window_size) for t in wide}) == 1
    assert wide[0].y.window_size <= square[0].y.window_size
    assert wide[0].y.window_size * wide[0].x.window_size <= (tile + 2 * top) ** 2
    assert pixels(wide) <= pixels(square)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for t in wide:
        covered[t.y.core_start : t.y.core_end, t.x.core_start : t.x.core_end] = 1
    assert bool(covered.all())
    if (height, width, tile) == (1024, 1024, 664):
        assert (len(wide), len(square)) == (3, 4) and pixels(wide) < 0.97 * pixels(square)


def test_batches_are_sent_a_few_tiles_at_a_time():
    shapes: list[tuple[int, ...]] = []

    def op(batch: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(batch.shape))
        return nearest_x2(batch)

    Tiler(op, TileSettings(tile=16, scale=2, overlap=4, pad=2, batch_size=3)).run(torch.rand(3, 40, 40))
    assert all(n <= 3 and h == w == 20 for n, _c, h, w in shapes)  # never the whole image
    assert sum(n for n, *_ in shapes) == 9  # a 3×3 grid


def test_progress_and_cancel_between_batches():
    reports: list[tuple[int, int]] = []
    calls = 0

    def op(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return nearest_x2(batch)

    tiler = Tiler(
        op,
        TileSettings(tile=16, scale=2, overlap=4, pad=2, batch_size=2),
        progress=lambda done, total: reports.append((done, total)),
        cancelled=lambda: len(reports) >= 3,
    )
    with pytest.raises(JobCancelled):
        tiler.run(torch.rand(3, 40, 40))
    assert calls == 2 and reports == [(0, 900), (200, 900), (400, 900)]  # hundredths of a tile


class OutOfMemoryAbove:
    """A test op that runs ``nearest_x2`` but, like a full GPU, fails for batches above a pixel count."""

    def __init__(self, max_pixels: int, error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        self.max_pixels = max_pixels
        self.error = error
        self.failures = 0
        self.ok_shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] * batch.shape[2] * batch.shape[3] > self.max_pixels:
            self.failures += 1
            if self.error is RuntimeError:
                raise RuntimeError(
                    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"
                )
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.ok_shapes.append(tuple(batch.shape))
        return nearest_x2(batch)


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError, MemoryError])
def test_out_of_memory_halves_the_tile_and_finishes(error, widen):
    image = torch.rand(3, 70, 70, generator=torch.Generator().manual_seed(5))
    op = OutOfMemoryAbove(max_pixels=40 * 40, error=error)
    tiler = Tiler(op, TileSettings(tile=64, scale=2, overlap=4, pad=2, batch_size=4, widen=widen))
    result = tiler.run(image)
    torch.testing.assert_close(result, nearest_x2(image[None])[0], atol=1e-6, rtol=0)
    assert 2 <= op.failures <= 4  # batches split, then the tile; later tiles start small, not failing
    assert tiler.batch_size == 1 and tiler.tile <= 32
    assert all(h * w <= 40 * 40 for _n, _c, h, w in op.ok_shapes)


def test_out_of_memory_splits_batches_before_tiles():
    op = OutOfMemoryAbove(max_pixels=2 * 20 * 20)
    tiler = Tiler(op, TileSettings(tile=16, scale=2, overlap=4, pad=2, batch_size=8))
    tiler.run(torch.rand(3, 40, 40))
    assert tiler.tile == 16 and tiler.batch_size in (1, 2)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error():
    tiler = Tiler(OutOfMemoryAbove(max_pixels=1), TileSettings(tile=32, scale=2, pad=2))
    with pytest.raises(MemoryError, match="out of memory"):
        tiler.run(torch.rand(3, 40, 40))


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input to have 3 channels")

    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="expected input"):
        Tiler(broken, TileSettings(tile=32, scale=2)).run(torch.rand(3, 40, 40))


def test_settings_reject_tiny_tiles():
    with pytest.raises(ValueError, match="at least 16"):
        TileSettings(tile=4, scale=2)


def test_auto_tile_grows_with_the_budget_and_is_bounded():
    small = auto_tile(64 << 20, bytes_per_pixel=4096, pad=10)
    large = auto_tile(1 << 30, bytes_per_pixel=4096, pad=10)
    assert 16 <= small < large <= 1024 and small % 8 == 0 and large % 8 == 0
    # The batch of windows stays inside the budget.
    assert 2 * (large + 20) ** 2 * 4096 > (1 << 30) >= (large + 20) ** 2 * 4096
    assert auto_tile(1 << 30, bytes_per_pixel=4096, pad=10, batch_size=4) < large
    assert auto_tile(1, bytes_per_pixel=4096, pad=10) == 16


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("size", [None, (90, 52)])
def test_rows_handed_on_in_bands_equal_the_whole_canvas(size, widen):
    """With a sink the result arrives in bands of final rows, in order, each row once, equal to the
    canvas built whole; the float canvas held at any time is a few rows of tiles, not the image."""
    image = torch.rand(3, 70, 40)
    settings = TileSettings(tile=20, scale=2, overlap=4, pad=2, batch_size=2, widen=widen)  # 15 tiles, or 10
    whole = Tiler(nearest_x2, settings).run(image, size=size)
    pieces: list[tuple[int, torch.Tensor]] = []
    tiler = Tiler(nearest_x2, settings)
    assert tiler.run(image, size=size, sink=lambda top, rows: pieces.append((top, rows.clone()))) is None
    tops = [top for top, _ in pieces]
    assert tops[0] == 0 and tops == sorted(tops) and len(pieces) >= 3
    assert all(top + rows.shape[1] == nxt for (top, rows), nxt in zip(pieces, tops[1:], strict=False))
    assert max(rows.shape[1] for _, rows in pieces) < whole.shape[1] / 2
    torch.testing.assert_close(torch.cat([rows for _, rows in pieces], dim=1), whole)


def test_a_single_tile_is_handed_on_whole():
    pieces: list[tuple[int, torch.Tensor]] = []
    tiler = Tiler(nearest_x2, TileSettings(tile=64, scale=2))
    tiler.run(torch.rand(3, 10, 10), sink=lambda top, rows: pieces.append((top, rows)))
    assert [(top, tuple(rows.shape)) for top, rows in pieces] == [(0, (3, 20, 20))]
