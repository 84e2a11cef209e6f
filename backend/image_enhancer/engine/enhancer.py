"""The engine's one entry point: ``Enhancer.enhance(pixels, options)`` runs the whole pipeline.

pixels (u8/u16/f32, 1–4 channels) → float32 CHW → alpha split and transparent colour filled →
network over tiles → resampled to the requested scale → colour fidelity → auto contrast → alpha
merged → the input's sample type and channel count.

The pixels are processed as the encoded values of their own colour space; nothing converts them to
or from sRGB. Float colour values outside [0, 1] (wide-gamut or high-dynamic-range images) are split
into the part in [0, 1], which the network sees, and the rest, which is resized like the picture
(bicubic) and added back to the result unchanged; float results are not clamped otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from image_enhancer import runtimes
from image_enhancer.engine import alpha as alpha_ops
from image_enhancer.engine import colour, pixels, runtime_choice
from image_enhancer.engine.bands import ArrayRows, ResultRows, RowSink
from image_enhancer.engine.devices import choose_device
from image_enhancer.engine.precision import check_precision
from image_enhancer.engine.tiling import (
    DEFAULT_OVERLAP,
    Tile,
    TileHook,
    Tiler,
    TileSettings,
    auto_tile,
    context_pad,
)
from image_enhancer.engine.watch import JobCancelled
from image_enhancer.paths import runtime_cache_dir
from image_enhancer.request import MIN_TILE, EnhanceOptions
from image_enhancer.runtimes.base import Runner, RunnerSettings, UnsupportedGraphError
from image_enhancer.runtimes.memory import set_cpu_threads

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor

log = logging.getLogger(__name__)

__all__ = ["EnhanceOptions", "Enhancer", "ImageTooLargeError", "JobCancelled", "Progress"]

#: Default limits: a 40-megapixel input and a 160-megapixel result (≈1.9 GB as float32 RGB).
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_OUTPUT_PIXELS = 160_000_000
#: Input pixels one CPU forward pass should cover for the cores to be used well, and the batch cap.
CPU_PIXELS_PER_PASS = 65_536
MAX_BATCH = 8


class ModelSource(Protocol):
    """What the engine needs from a model store (``weights.store.ModelStore`` is one)."""

    def get(self, name: str, strength: float | None = None) -> LoadedModel: ...


class ImageTooLargeError(Exception):
    """The input or the result would exceed the pixel limit."""


@dataclass(frozen=True)
class Progress:
    """``stage`` is "loading model", "enhancing" (``done``/``total`` in hundredths of a tile,
    ``tiling.PARTS_PER_TILE``) or "finishing"."""

    stage: str
    done: int
    total: int


class Enhancer:
    """Runs enhancement requests on one device. Keeps the prepared network of the last models used.

    ``device`` and ``runtime`` choose where the network runs (``engine.devices.choose_device``; auto:
    a GPU, else the CPU on its fastest runtime); ``compute`` says what was chosen. Networks the chosen
    runtime cannot take run on the reference runtime (``runtimes.REFERENCE``) on the CPU. Each runtime
    caches its converted networks in its own folder under ``runtime_cache`` (the user cache).
    ``batch_size`` (tiles per forward pass) defaults to 4 on GPUs and, on CPU, to enough small
    tiles to make each forward pass about 64k input pixels (one for large tiles); ``channels_last``
    defaults to on for CUDA and CPU, off for MPS; ``threads`` sets the CPU thread count (None: one per core).
    """

    def __init__(
        self,
        store: ModelSource,
        device: str = "auto",
        precision: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
        threads: int | None = None,
        batch_size: int | None = None,
        channels_last: bool | None = None,
        runtime: str = "auto",
        runtime_cache: Path | None = None,
    ) -> None:
        self.store = store
        self._requested_runtime = runtime
        self.compute = choose_device(device, runtime)
        self.device = self.compute.torch_device
        check_precision(precision)
        self.precision = precision
        self.max_pixels = max_pixels
        self.max_output_pixels = max_output_pixels
        set_cpu_threads(threads)
        self.threads = torch.get_num_threads()
        self.runtime_table = runtime_choice.RuntimeTable()
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.settings = RunnerSettings(self.compute, runtime_cache or runtime_cache_dir(), channels_last)
        self._runners: dict[tuple[int, object], tuple[LoadedModel, Runner, float]] = {}

    def enhance(
        self,
        image: np.ndarray,
        options: EnhanceOptions,
        progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        rows: ResultRows | None = None,
        chosen_for: tuple[int, int] | None = None,
    ) -> np.ndarray | None:
        """Enhance an ``H×W×C`` (or ``H×W``) uint8/uint16/float32 image; same dtype and channels out.

        With ``rows``, a result built in bands whose alpha (if any) is known before its colour — absent,
        constant or bicubic, not run through the model — goes to ``rows`` band by band as it is made
        (``H×W×1`` bands for an ``H×W`` image) and None is returned; any other result is returned whole
        and ``rows`` is not used. Either way the samples are the same.

        ``progress`` receives a Progress when a stage starts, per batch of tiles and, from runtimes
        that can tell, at least every ``watch.REPORT_INTERVAL_S`` inside one; ``cancelled`` is polled
        between batches and inside runtimes that can stop mid-window, and a true answer raises
        JobCancelled. Bad input raises ValueError (PixelFormatError for the array); too many pixels,
        ImageTooLargeError; unknown models, the store's LookupError.

        The runtime and precision are those ``job_choice`` gives for the image, or for an image of size
        ``chosen_for`` (the planner times a window of a large job with the job's runtime).
        """
        pixels.check_image(image)
        options.validate()
        height, width = image.shape[:2]
        if height * width > self.max_pixels:
            raise ImageTooLargeError(
                f"the image has {width}×{height} = {height * width / 1e6:.1f} megapixels; "
                f"this server accepts at most {self.max_pixels / 1e6:.1f} megapixels"
            )

        def report(stage: str, done: int, total: int) -> None:
            if progress is not None:
                progress(Progress(stage, done, total))

        def check_cancelled() -> None:
            if cancelled is not None and cancelled():
                raise JobCancelled("the job was cancelled")

        report("loading model", 0, 1)
        loaded = self.store.get(options.model, options.strength)
        descriptor = loaded.descriptor
        out_height, out_width = _output_size(height, width, options, descriptor)
        if out_height * out_width > self.max_output_pixels:
            raise ImageTooLargeError(
                f"the result would be {out_width}×{out_height} = {out_height * out_width / 1e6:.1f} "
                f"megapixels; this server produces at most {self.max_output_pixels / 1e6:.1f} megapixels "
                "— choose a smaller scale or a smaller image"
            )
        # Preparing the network (converting it, and on first use timing the CPU runtimes) is loading too.
        runner, bytes_per_pixel = self._runner(loaded, chosen_for or (height, width))
        report("loading model", 1, 1)
        check_cancelled()

        tensor = pixels.to_tensor(image)
        colour_in, alpha_in = alpha_ops.split_alpha(tensor)
        if alpha_in is not None:
            alpha_in = alpha_in.clamp(0.0, 1.0)  # opacity has no meaning outside [0, 1]
        if options.linear:
            colour_in = pixels.linear_to_srgb(colour_in)
        colour_in, beyond = pixels.split_range(colour_in)  # the network sees [0, 1]; the rest goes past it
        alpha_constant = alpha_ops.constant_value(alpha_in) if alpha_in is not None else None
        if alpha_in is not None and alpha_constant is None:
            colour_in = alpha_ops.fill_transparent(colour_in, alpha_in)
            if beyond is not None:  # hidden colour must not spread into visible pixels this way either
                beyond = beyond * (alpha_in > 0)

        passes = self._passes(colour_in.shape[0], descriptor)
        # Below the network's scale (×2 from a ×4 model) the tiler shrinks each tile as it is done, so the
        # largest canvas is the result's; the values are colour.resize's of the whole, clamped as it clamps.
        full = (height * descriptor.scale, width * descriptor.scale)
        smaller = out_height <= full[0] and out_width <= full[1] and (out_height, out_width) != full
        shrink = (out_height, out_width) if smaller else None
        # When every step after the network works pixel by pixel, the result is converted to its samples
        # band by band as the tiles finish, and never sits in memory whole as floats.
        by_pixel = not options.colour_fidelity and beyond is None and passes == 1
        banded = by_pixel and (shrink is not None or (out_height, out_width) == full)
        # The same whether the rows go to a file or not: the same tiles, so the same samples either way.
        pending = _pending_bytes((out_height, out_width), tensor.shape[0], image.dtype.itemsize, banded)
        band_rows = _band_row_bytes((height, width), (out_height, out_width)) if banded else 0.0
        tiler = Tiler(
            runner,
            self._settings(options, descriptor, runner, bytes_per_pixel, (height, width), pending, band_rows),
            progress=lambda done, total: report("enhancing", done, total),
            cancelled=cancelled,
        )
        alpha_by_model = alpha_in is not None and alpha_constant is None and options.alpha_mode == "model"
        total = tiler.count_tiles(height, width) * (
            passes + (self._passes(1, descriptor) if alpha_by_model else 0)
        )

        if banded:
            # A model-run alpha is a second pass over the whole result: no row is final before it ends.
            target = rows if rows is not None and not alpha_by_model else ArrayRows()
            self._enhance_in_bands(
                tiler, colour_in, alpha_in, alpha_constant, options, descriptor, total, shrink, image.dtype,
                target, alpha_by_model,
            )  # fmt: skip
            report("finishing", 0, 1)
            check_cancelled()
            report("finishing", 1, 1)
            if target is rows:
                return None
            assert isinstance(target, ArrayRows) and target.array is not None
            output = target.array
            return output[:, :, 0] if image.ndim == 2 else output

        result = self._network(tiler, colour_in, descriptor, 0, total, shrink)
        result = result.clamp_(0.0, 1.0) if shrink else colour.resize(result, out_height, out_width)
        alpha_out = None
        if alpha_in is not None:
            if alpha_constant is not None:
                alpha_out = torch.full((1, out_height, out_width), alpha_constant)
            elif alpha_by_model:
                done = tiler.count_tiles(height, width) * passes
                if shrink:  # the same per-pixel rules, applied to each tile before it is blended and shrunk
                    fix = partial(_flat_alpha_kept, alpha_in, descriptor.scale)
                    alpha_out = self._network(tiler, alpha_in, descriptor, done, total, shrink, fix)
                    alpha_out = alpha_out.clamp_(0, 1)
                else:
                    upscaled = self._network(tiler, alpha_in, descriptor, done, total).clamp_(0, 1)
                    upscaled = alpha_ops.keep_flat_alpha(upscaled, alpha_in, descriptor.scale)
                    alpha_out = colour.resize(upscaled, out_height, out_width)
            else:
                alpha_out = alpha_ops.upscale_bicubic(alpha_in, out_height, out_width)

        report("finishing", 0, 1)
        check_cancelled()
        if options.colour_fidelity:
            result = colour.match_colour(result, colour_in)
        if options.auto_contrast > 0:
            result = colour.apply_levels(result, colour.measure_levels(colour_in), options.auto_contrast)
        if beyond is not None:
            result = result + colour.resize(beyond, out_height, out_width, clamp=False)
        if options.linear:
            result = pixels.srgb_to_linear(result)
        output = _to_array([result] if alpha_out is None else [result, alpha_out], image.dtype)
        report("finishing", 1, 1)
        return output[:, :, 0] if image.ndim == 2 else output

    def _enhance_in_bands(
        self,
        tiler: Tiler,
        colour_in: torch.Tensor,
        alpha_in: torch.Tensor | None,
        alpha_constant: float | None,
        options: EnhanceOptions,
        descriptor: ModelDescriptor,
        total: int,
        shrink: tuple[int, int] | None,
        dtype: np.dtype,
        rows: ResultRows,
        alpha_by_model: bool,
    ) -> None:
        """The network's result and the per-pixel steps after it, converted to the result's samples as
        the tiler hands on final rows (``bands``) and given to ``rows``: the same values as the
        whole-canvas path. An alpha the model runs is filled in afterwards (``rows`` an ArrayRows then)."""
        height, width = colour_in.shape[-2:]
        out_height, out_width = shrink or (height * descriptor.scale, width * descriptor.scale)
        channels = colour_in.shape[0]
        shape = (out_height, out_width, channels + (alpha_in is not None))
        rows.begin(shape, np.dtype(dtype))
        levels = colour.measure_levels(colour_in) if options.auto_contrast > 0 else None
        # An alpha known before the colour goes out with each band of it (a constant one as a broadcast).
        alpha = None
        if alpha_constant is not None:
            constant = pixels.from_tensor(torch.full((1, 1, 1), alpha_constant), dtype)
            alpha = np.broadcast_to(constant, (out_height, out_width, 1))
        elif alpha_in is not None and not alpha_by_model:
            alpha = _to_array([alpha_ops.upscale_bicubic(alpha_in, out_height, out_width)], dtype)

        def colour_rows(top: int, values: torch.Tensor) -> None:
            if shrink is not None:
                values = values.clamp(0.0, 1.0)  # as colour.resize clamps the whole
            if levels is not None:
                values = colour.apply_levels(values, levels, options.auto_contrast)
            if options.linear:
                values = pixels.srgb_to_linear(values)
            samples = pixels.from_tensor(values, dtype, scratch=True)  # the band's rows are let go after
            if shape[2] == channels:  # no alpha: the converted colour is the band, not copied again
                rows.write(samples)
                return
            band = np.empty((values.shape[1], *shape[1:]), dtype=dtype)
            band[:, :, :channels] = samples
            if alpha is not None:  # else the model runs it after the colour
                band[:, :, channels:] = alpha[top : top + values.shape[1]]
            rows.write(band)

        self._network(tiler, colour_in, descriptor, 0, total, shrink, sink=colour_rows)
        if alpha_by_model:
            assert isinstance(rows, ArrayRows) and rows.array is not None and alpha_in is not None
            output = rows.array

            def alpha_rows(top: int, values: torch.Tensor) -> None:
                samples = pixels.from_tensor(values.clamp(0.0, 1.0), dtype)
                output[top : top + values.shape[1], :, channels:] = samples

            done = tiler.count_tiles(height, width)
            fix = partial(_flat_alpha_kept, alpha_in, descriptor.scale)
            self._network(tiler, alpha_in, descriptor, done, total, shrink, fix, sink=alpha_rows)

    def tile_settings(
        self,
        height: int,
        width: int,
        options: EnhanceOptions,
        channels: int = 3,
        chosen_for: tuple[int, int] | None = None,
    ) -> TileSettings:
        """How a job on a ``height × width`` image with ``channels`` channels will be tiled (prepares the
        model when needed); ``chosen_for`` as in ``enhance``."""
        loaded = self.store.get(options.model, options.strength)
        runner, bytes_per_pixel = self._runner(loaded, chosen_for or (height, width))
        out_size = _output_size(height, width, options, loaded.descriptor)
        # As a job will hold them: the input as floats, and an 8-bit result built in bands.
        banded = not options.colour_fidelity
        result = _pending_bytes(out_size, channels, 1, banded)
        images = 4 * channels * height * width + result
        band_rows = _band_row_bytes((height, width), out_size) if banded else 0.0
        return self._settings(
            options, loaded.descriptor, runner, bytes_per_pixel, (height, width), images, band_rows
        )

    def network_pixels(
        self,
        height: int,
        width: int,
        options: EnhanceOptions,
        channels: int = 3,
        passes: int = 1,
        chosen_for: tuple[int, int] | None = None,
    ) -> int:
        """The pixels the network makes for a job on a ``height × width`` image: every window of its tile
        plan (context included) at the model's own scale, whatever scale was asked for, once per pass.
        The work of a job is close to proportional to it (prepares the model when needed); ``chosen_for``
        as in ``enhance``."""
        s = self.tile_settings(height, width, options, channels, chosen_for)
        return passes * s.scale**2 * sum(t.y.window_size * t.x.window_size for t in s.plan(height, width))

    def job_choice(self, height: int, width: int, options: EnhanceOptions) -> runtime_choice.Timing:
        """The runtime and precision a job on a ``height × width`` image runs with (prepares the model;
        on first use of its network on the CPU, times the runtimes)."""
        return self._choice_for(self.store.get(options.model, options.strength), (height, width))

    def _choice_for(self, loaded: LoadedModel, size: tuple[int, int]) -> runtime_choice.Timing:
        return self.choice(loaded, size[0] * size[1] * loaded.descriptor.scale**2, size)

    def _runner(self, loaded: LoadedModel, size: tuple[int, int]) -> tuple[Runner, float]:
        """The prepared network for this model, reused across requests (the last two are kept), for a
        job on an image of ``size`` (see ``job_choice``)."""
        choice = self._choice_for(loaded, size)
        key = (id(loaded.module), choice.runtime, choice.precision)
        if key not in self._runners:
            runner = self._make_runner(loaded, choice)
            while len(self._runners) >= 2:
                self._runners.pop(next(iter(self._runners)))
            # The LoadedModel is kept in the entry so its id cannot be reused while the key lives.
            self._runners[key] = (loaded, runner, runner.bytes_per_pixel())
        _, runner, bytes_per_pixel = self._runners[key]
        return runner, bytes_per_pixel

    def choice(
        self, loaded: LoadedModel, job_pixels: int = 0, size: tuple[int, int] | None = None
    ) -> runtime_choice.Timing:
        """The runtime and precision this model runs with. On the CPU with runtime ``auto`` and precision
        ``auto`` or ``fp32``: the fastest measured here (``runtime_choice``; measured on first use),
        versions a runtime measured itself (an int8 one) included where they are within the bound and
        faster, for an image of ``size`` (None: a large one; a small image fits one runtime's single
        window but needs tiles on another). Otherwise the device's runtime (the reference runtime for a
        graph it cannot take) with its precision for what was asked."""
        if self.measured_choice:
            try:
                timings = self.runtime_table.timings(loaded, self.candidate_factory(loaded), self.threads)
            except Exception as why:  # the network itself then fails its job with a clearer message
                log.warning("could not time the CPU runtimes for this network (%s); using %s", why,
                            self.compute.runtime)  # fmt: skip
            else:
                if self.precision == "auto":
                    timings = timings + self._derived_timings(loaded, timings, job_pixels)
                return runtime_choice.best(timings, self.precision, size)
        runtime = runtimes.get(self.compute.runtime)
        if not runtime.supports(loaded.descriptor.architecture):
            runtime = runtimes.REFERENCE
        precision = runtime.precision(self.precision, self.settings, loaded, job_pixels)
        return runtime_choice.Timing(runtime.name, precision, 0.0)

    @property
    def measured_choice(self) -> bool:
        """Whether runtime and precision are measured (``runtime_choice``) rather than given."""
        cpu = self.compute.key == "cpu"
        return cpu and self._requested_runtime == "auto" and self.precision in ("auto", "fp32")

    def _derived_timings(
        self, loaded: LoadedModel, timings: list[runtime_choice.Timing], job_pixels: int
    ) -> list[runtime_choice.Timing]:
        """The versions runtimes measured themselves (``Runtime.derived``), timed from their speed-up over
        that runtime's measured fp32."""
        found = []
        for runtime in runtimes.installed():
            fp32 = next((t for t in timings if (t.runtime, t.precision) == (runtime.name, "fp32")), None)
            if fp32 is None:
                continue
            for version in runtime.derived(self.settings, loaded, job_pixels):
                d = version.difference
                pace = fp32.seconds_per_pixel / version.speedup
                found.append(replace(  # its windows are fp32's: the same tile core and context
                    fp32, precision=version.precision, seconds_per_pixel=pace,
                    mean_levels=d.mean_levels, max_levels=d.max_levels, psnr_db=d.psnr_db,
                ))  # fmt: skip
        return found

    def candidate_factory(self, loaded: LoadedModel) -> runtime_choice.RunnerFactory:
        """Makes a runner of ``loaded`` for each candidate ``runtime_choice`` times (no reference-runtime
        stand-in for a graph a runtime cannot take: that candidate fails)."""

        def make(candidate: runtime_choice.Candidate) -> Runner:
            choice = runtime_choice.Timing(candidate.runtime, candidate.precision, 0.0)
            return self._make_runner(loaded, choice, fallback=False)

        return make

    def _make_runner(
        self, loaded: LoadedModel, choice: runtime_choice.Timing, fallback: bool = True
    ) -> Runner:
        """A runner for the choice; a graph a runtime cannot convert runs on the reference runtime
        instead (with ``fallback``; else the converter's error is raised)."""
        runtime = runtimes.get(choice.runtime)
        try:
            return runtime.make_runner(loaded, choice.precision, self.settings, choice.seconds_per_pixel)
        except UnsupportedGraphError as why:
            if not fallback or runtime is runtimes.REFERENCE:
                raise
            log.warning("%s; running it on %s", why, runtimes.REFERENCE.display_name)
            reference = runtimes.REFERENCE
            precision = reference.precision(self.precision, self.settings, loaded, 0)
            return reference.make_runner(loaded, precision, self.settings)

    def _settings(
        self,
        options: EnhanceOptions,
        descriptor: ModelDescriptor,
        runner: Runner,
        bytes_per_pixel: float,
        size: tuple[int, int],
        images: int = 0,
        band_rows: float = 0.0,
    ) -> TileSettings:
        """``images``: the bytes the job's own images will still take (``_pending_bytes``), and
        ``band_rows``, those its float band of result rows holds per input row of a tile's height
        (``_band_row_bytes``; 0 when the result is not built in bands). On the CPU they share the memory
        with the network, so its budget (what the process may still take) shrinks by them, to a quarter
        at least: a 12-megapixel photo at ×2 then stays within the 2.5 GB promised."""
        pad = context_pad(descriptor)
        cpu = self.device.type == "cpu"
        tile = options.tile
        band_rows = band_rows if cpu else 0.0
        whole = size[0] * size[1] * bytes_per_pixel + size[0] * band_rows

        def budget_now(give_back_freed: bool) -> int:
            budget = runner.memory_budget(give_back_freed)
            return max(budget // 4, budget - images) if cpu else budget

        # Memory freed before and kept by the C allocator is given back to the system only for a job
        # sized by its budget: one that fits a single window without it is planned alike either way,
        # and giving it back makes the job fault its buffers in again (5 ms of a 70 ms job at 256²).
        budget = budget_now(give_back_freed=False)
        if tile or whole > budget:
            budget = budget_now(give_back_freed=True)
        fits = whole <= budget
        if descriptor.tiling == "internal" or (not tile and fits):
            # One window, the plain forward pass: the network must see the whole image (it tiles by
            # itself), or the whole image fits and no context needs computing twice. This also covers
            # models for which tiling is only discouraged.
            tile = max(MIN_TILE, *size)
        tile = tile or auto_tile(
            budget, bytes_per_pixel, pad, self.batch_size or (1 if cpu else 4), row_bytes=band_rows
        )
        batch = self.batch_size
        if batch is None:
            # On CPU a forward pass over a small window wastes most of its time (measured 3× slower per
            # pixel for 94² windows than for batches of four), so small tiles are stacked; large ones
            # already fill the cores. Either way the batch stays inside the memory budget.
            window = (tile + 2 * pad) ** 2
            wanted = max(1, CPU_PIXELS_PER_PASS // window) if cpu else 4
            batch = max(1, min(wanted, MAX_BATCH, int(budget // (window * bytes_per_pixel))))
        return TileSettings(
            tile=tile,
            scale=descriptor.scale,
            overlap=DEFAULT_OVERLAP,
            pad=pad,
            multiple=descriptor.size_multiple,
            min_size=descriptor.min_size,
            batch_size=batch,
            widen=not options.tile,
        )

    @staticmethod
    def _passes(channels: int, descriptor: ModelDescriptor) -> int:
        """Network passes over the image: one, or one per channel for a gray network on colour."""
        if channels == descriptor.in_channels or (channels == 1 and descriptor.in_channels == 3):
            return 1
        if descriptor.in_channels == 1:
            return channels
        raise ValueError(
            f"the model takes {descriptor.in_channels}-channel images and cannot process {channels} channels"
        )

    @staticmethod
    def _network(
        tiler: Tiler,
        image: torch.Tensor,
        descriptor: ModelDescriptor,
        done: int,
        total: int,
        size: tuple[int, int] | None = None,
        per_tile: TileHook | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        """Run the network over ``image``, adapting gray/RGB to what it takes; same channel count out.
        ``size``, ``per_tile`` and ``sink`` as in ``Tiler.run`` (``sink`` only with one pass)."""
        channels, height, width = image.shape
        per_pass = tiler.count_tiles(height, width)
        if channels == descriptor.in_channels:
            return tiler.run(image, done, total, size, per_tile, sink)
        if channels == 1:  # gray through an RGB network, folded back to gray tile by tile

            def fold(core: torch.Tensor, t: Tile) -> torch.Tensor:
                gray = pixels.rgb_to_gray(core)
                return per_tile(gray, t) if per_tile is not None else gray

            return tiler.run(pixels.gray_to_rgb(image), done, total, size, fold, sink)
        return torch.cat(
            [tiler.run(image[c : c + 1], done + c * per_pass, total, size, per_tile) for c in range(channels)]
        )


def _flat_alpha_kept(alpha: torch.Tensor, scale: int, core: torch.Tensor, tile: Tile) -> torch.Tensor:
    """A tile's network alpha, clamped, with the flat areas of the source alpha kept exact."""
    return alpha_ops.keep_flat_alpha_at(core.clamp(0, 1), alpha, scale, tile.y.core_start, tile.x.core_start)


def _output_size(
    height: int, width: int, options: EnhanceOptions, descriptor: ModelDescriptor
) -> tuple[int, int]:
    scale = options.scale if options.scale is not None else float(descriptor.scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _pending_bytes(out_size: tuple[int, int], channels: int, itemsize: int, banded: bool) -> int:
    """What a job allocates for its result once its network has started: the result's samples, and its
    float canvas unless the result is built in bands (the input is already held by then)."""
    samples = out_size[0] * out_size[1] * channels
    return samples * itemsize + (0 if banded else 4 * samples)


def _band_row_bytes(size: tuple[int, int], out_size: tuple[int, int]) -> float:
    """The bytes a result built in bands holds as float RGB per input row of a tile's height."""
    return 4 * 3 * out_size[1] * out_size[0] / size[0]


#: Rows converted at a time from the float result to the output's samples, so the conversion never
#: holds a second float copy of a large result.
CONVERSION_ROWS = 256


def _to_array(parts: list[torch.Tensor], dtype: np.dtype) -> np.ndarray:
    """``(C, H, W)`` tensors (colour, then alpha) → one ``H×W×ΣC`` array of ``dtype``, band by band."""
    height, width = parts[0].shape[-2:]
    output = np.empty((height, width, sum(part.shape[0] for part in parts)), dtype=dtype)
    for top in range(0, height, CONVERSION_ROWS):
        bottom = min(height, top + CONVERSION_ROWS)
        channel = 0
        for part in parts:
            output[top:bottom, :, channel : channel + part.shape[0]] = pixels.from_tensor(
                part[:, top:bottom], dtype
            )
            channel += part.shape[0]
    return output
