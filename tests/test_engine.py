"""The whole engine with real converted weights on real photos (small crops to keep CPU time low)."""

from __future__ import annotations

import ctypes
import dataclasses
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from image_enhancer.engine import pixels
from image_enhancer.engine.devices import choose_device
from image_enhancer.engine.enhancer import (
    EnhanceOptions,
    Enhancer,
    ImageTooLargeError,
    JobCancelled,
    Progress,
)
from image_enhancer.engine.pixels import PixelFormatError
from image_enhancer.engine.tiling import PARTS_PER_TILE, Tiler, TileSettings
from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.runtimes.common import Fp32Rerun
from image_enhancer.runtimes.memory import (
    DEFAULT_MEMORY_LIMIT,
    MEMORY_LIMIT_ENV,
    memory_budget,
    resident_bytes,
)
from image_enhancer.runtimes.pytorch import resolve_precision
from image_enhancer.runtimes.pytorch.runner import ModelRunner
from image_enhancer.weights.store import ModelStore

DATA = Path(__file__).parent / "data"
COMPACT = "realesr-animevideov3"
X4PLUS = "realesrgan-x4plus"


@pytest.fixture(scope="module")
def forest() -> np.ndarray:
    return np.asarray(Image.open(DATA / "forest_256.png").convert("RGB"))


@pytest.fixture(scope="module", params=["pytorch", "openvino", "ncnn"])
def enhancer(model_store, request) -> Enhancer:
    """The engine on each CPU runtime: everything but running the network is shared, so every
    behaviour below must hold on all of them."""
    return Enhancer(model_store, device="cpu", runtime=request.param)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(peak**2 / mse))


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average downscale (Pillow), to compare a result with its input."""
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def test_tiled_equals_untiled_on_a_real_photo(enhancer, forest):
    crop = forest[64:160, 96:192]
    whole = enhancer.enhance(crop, EnhanceOptions(model=COMPACT, tile=96))
    tiled = enhancer.enhance(crop, EnhanceOptions(model=COMPACT, tile=56))
    assert whole.shape == tiled.shape == (384, 384, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_tiled_equals_untiled_with_our_psnr_model(enhancer, forest):
    """The acceptance check on a PSNR-type model: our committed compact PSNR generator."""
    crop = forest[32:160, 64:192]
    whole = enhancer.enhance(crop, EnhanceOptions(model="ie-compact-x4-psnr", tile=128))
    tiled = enhancer.enhance(crop, EnhanceOptions(model="ie-compact-x4-psnr", tile=40))
    assert whole.shape == tiled.shape == (512, 512, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_an_image_that_fits_is_exactly_the_plain_forward_pass(enhancer, model_store, forest):
    """No invented border context and no tiling overhead: one window, the image itself."""
    crop = forest[:72, :88]
    ours = enhancer.enhance(crop, EnhanceOptions(model=COMPACT))
    with torch.inference_mode():
        plain = model_store.get(COMPACT).module(pixels.to_tensor(crop)[None])[0]
    expected = pixels.from_tensor(plain, np.uint8)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_plain_forward_tiles_record_one_window_per_image(forest):
    windows: list[tuple[int, ...]] = []

    def nearest_x4(batch: torch.Tensor) -> torch.Tensor:
        windows.append(tuple(batch.shape))
        return torch.nn.functional.interpolate(batch, scale_factor=4, mode="nearest")

    Tiler(nearest_x4, TileSettings(tile=96, scale=4, pad=32)).run(pixels.to_tensor(forest[:72, :88]))
    assert windows == [(1, 3, 72, 88)]


def column_step_energy(image: torch.Tensor) -> np.ndarray:
    """Mean absolute step (in 8-bit levels) between each output column and the next."""
    levels = (image.clamp(0, 1) * 255).round().double()
    return (levels[:, :, 1:] - levels[:, :, :-1]).abs().mean(dim=(0, 1)).numpy()


@pytest.mark.slow
def test_gan_model_leaves_no_seams(model_store, forest):
    """Step energy across tile borders, relative to the untiled result, stays at its usual level."""
    loaded = model_store.get(X4PLUS)
    runner = ModelRunner(loaded, torch.device("cpu"), torch.float32)
    image = pixels.to_tensor(forest[100:124, 40:96])  # 24×56: two tiles of 32 side by side
    pad = loaded.descriptor.tile_pad
    untiled = column_step_energy(Tiler(runner, TileSettings(tile=64, scale=4, pad=pad)).run(image))
    ours = column_step_energy(Tiler(runner, TileSettings(tile=32, scale=4, overlap=8, pad=pad)).run(image))
    # Tiles pasted without context or blending, cut at column 28: a seam the measure must see.
    naive = column_step_energy(Tiler(runner, TileSettings(tile=28, scale=4, overlap=0, pad=0)).run(image))
    band = slice(24 * 4 - 8, 32 * 4 + 8)  # where our two tiles overlap and blend
    assert (ours[band] / untiled[band]).max() < 1.1
    assert naive[28 * 4 - 1] / untiled[28 * 4 - 1] > 1.25


def test_sixteen_bit_in_gives_sixteen_bit_out(enhancer, forest):
    crop16 = forest[:48, :48].astype(np.uint16) * 257 + np.random.default_rng(0).integers(
        0, 200, (48, 48, 3), dtype=np.uint16
    )
    result = enhancer.enhance(crop16, EnhanceOptions(model=COMPACT))
    assert result.dtype == np.uint16 and result.shape == (192, 192, 3)
    assert len(np.unique(result)) > 4096  # far more than the 256 levels of 8 bits
    result8 = enhancer.enhance(forest[:48, :48], EnhanceOptions(model=COMPACT))
    assert psnr(result / 257.0, result8.astype(np.float64)) > 30


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_channel_layout_keeps_its_layout(enhancer, forest, channels):
    rgb = forest[:40, :40]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))
    image = {1: gray[:, :, None], 2: np.dstack([gray, alpha]), 3: rgb, 4: np.dstack([rgb, alpha])}[channels]
    result = enhancer.enhance(image, EnhanceOptions(model=COMPACT, alpha_mode="bicubic"))
    assert result.shape == (160, 160, channels) and result.dtype == np.uint8
    colour = 1 if channels < 3 else 3
    assert psnr(shrink(np.squeeze(result[:, :, :colour]), (40, 40)), np.squeeze(image[:, :, :colour])) > 25


def test_two_dimensional_gray_stays_two_dimensional(enhancer, forest):
    gray = np.asarray(Image.fromarray(forest[:24, :24]).convert("L"))
    assert enhancer.enhance(gray, EnhanceOptions(model=COMPACT)).shape == (96, 96)


def test_float32_in_gives_float32_out(enhancer, forest):
    image = forest[:32, :32].astype(np.float32) / 255
    result = enhancer.enhance(image, EnhanceOptions(model=COMPACT))
    assert result.dtype == np.float32 and result.shape == (128, 128, 3)
    assert result.min() >= 0.0 and result.max() <= 1.0
    as_u8 = enhancer.enhance(forest[:32, :32], EnhanceOptions(model=COMPACT))
    assert np.abs(result * 255 - as_u8).max() <= 1.0


def test_linear_light_input_is_returned_in_linear_light(enhancer, forest):
    srgb = forest[:32, :32].astype(np.float32) / 255
    linear = pixels.srgb_to_linear(torch.from_numpy(srgb)).numpy()
    from_srgb = enhancer.enhance(srgb, EnhanceOptions(model=COMPACT))
    from_linear = enhancer.enhance(linear, EnhanceOptions(model=COMPACT, linear=True))
    back = pixels.linear_to_srgb(torch.from_numpy(from_linear)).numpy()
    assert np.abs(back - from_srgb).max() < 2e-3


@pytest.mark.parametrize(("scale", "size"), [(1, 24), (1.5, 36), (3, 72), (8, 192), (None, 96)])
def test_any_output_scale(enhancer, forest, scale, size):
    crop = forest[:24, :24]
    result = enhancer.enhance(crop, EnhanceOptions(model=COMPACT, scale=scale))
    assert result.shape == (size, size, 3)
    assert psnr(shrink(result, (24, 24)), crop) > 25


def test_progress_reports_every_stage_in_order(enhancer, forest):
    seen: list[Progress] = []
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1))
    rgba = np.dstack([forest[:48, :48], alpha])
    enhancer.enhance(rgba, EnhanceOptions(model=COMPACT, tile=24), progress=seen.append)
    order = ["loading model", "enhancing", "finishing"]
    stages = [order.index(p.stage) for p in seen]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    tiles = [p for p in seen if p.stage == "enhancing"]
    # Nine tiles for the colour and nine for the alpha, in hundredths of a tile, from the network's
    # start (not after its first batch) to the total.
    assert tiles[0].done == 0 and tiles[-1].done == tiles[-1].total == 18 * PARTS_PER_TILE
    assert len(tiles) >= 3 and [p.done for p in tiles] == sorted(p.done for p in tiles)


def test_cancel_stops_between_batches(enhancer, forest):
    seen: list[Progress] = []
    with pytest.raises(JobCancelled):
        enhancer.enhance(
            forest[:64, :64],
            EnhanceOptions(model=COMPACT, tile=24),
            progress=seen.append,
            cancelled=lambda: any(p.stage == "enhancing" for p in seen),
        )
    tiles = [p for p in seen if p.stage == "enhancing"]
    assert len(tiles) == 1 and tiles[0].done == 0  # stopped inside the first batch


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (EnhanceOptions(model=COMPACT, scale=0.5), "scale must be between 1 and 8"),
        (EnhanceOptions(model=COMPACT, scale=9), "scale must be between 1 and 8"),
        (EnhanceOptions(model=COMPACT, scale=float("nan")), "scale"),
        (EnhanceOptions(model=COMPACT, strength=1.5), "strength must be between 0 and 1"),
        (EnhanceOptions(model=COMPACT, tile=8), "tile size"),
        (EnhanceOptions(model=COMPACT, tile=100_000), "tile size"),
        (EnhanceOptions(model=COMPACT, alpha_mode="magic"), "unknown alpha mode 'magic'"),
        (EnhanceOptions(model=COMPACT, auto_contrast=-0.1), "auto_contrast"),
        (EnhanceOptions(model=None), "model must be named"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_are_refused_clearly(enhancer, forest, options, message):
    with pytest.raises(ValueError, match=message):
        enhancer.enhance(forest[:16, :16], options)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 5), np.uint8), "channels"),
        (np.zeros((8, 8, 3), np.int64), "sample type"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_pixels_are_refused_clearly(enhancer, image, message):
    with pytest.raises(PixelFormatError, match=message):
        enhancer.enhance(image, EnhanceOptions(model=COMPACT))


def test_unknown_model_is_a_lookup_error(enhancer, forest):
    with pytest.raises(LookupError):
        enhancer.enhance(forest[:16, :16], EnhanceOptions(model="no-such-model"))


def test_pixel_limits_on_input_and_output(model_store, forest):
    small = Enhancer(model_store, device="cpu", max_pixels=1000)
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        small.enhance(forest[:40, :40], EnhanceOptions(model=COMPACT))
    capped = Enhancer(model_store, device="cpu", max_output_pixels=100 * 100)
    with pytest.raises(ImageTooLargeError, match="smaller scale"):
        capped.enhance(forest[:40, :40], EnhanceOptions(model=COMPACT))
    assert capped.enhance(forest[:40, :40], EnhanceOptions(model=COMPACT, scale=2)).shape == (80, 80, 3)


def test_device_and_precision_choices():
    assert choose_device("cpu", "pytorch").torch_device.type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        choose_device("tpu")
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_device("cpu", "onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda is not available here; found: .*cpu"):
            choose_device("cuda")
    descriptor = ModelDescriptor(architecture="test", scale=2, in_channels=3, out_channels=3)
    assert resolve_precision("fp16", torch.device("cpu"), descriptor) is torch.float32
    assert resolve_precision("int8", torch.device("cpu"), descriptor) is torch.float32  # OpenVINO's only
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", torch.device("cpu"), descriptor)


def test_fp16_asked_of_a_model_that_is_not_fp16_safe_runs_in_bf16(monkeypatch):
    # The choice for a CUDA device, on a GPU with bf16 (CUDA itself is not needed to decide).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    cuda = torch.device("cuda")
    safe = ModelDescriptor(architecture="test", scale=2, in_channels=3, out_channels=3)
    unsafe = dataclasses.replace(safe, supports_half=False)
    neither = dataclasses.replace(unsafe, supports_bf16=False)
    assert resolve_precision("fp16", cuda, safe) is torch.float16
    for asked in ("fp16", "auto"):
        assert resolve_precision(asked, cuda, unsafe) is torch.bfloat16
        assert resolve_precision(asked, cuda, neither) is torch.float32


class Recording(torch.nn.Module):
    """A ×1 identity network that records the size of every batch given to it or to its copies."""

    seen: ClassVar[list[tuple[int, ...]]] = []  # on the class: the engine runs a copy of the module

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        Recording.seen.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Recording.seen.append(tuple(x.shape))
        return x * self.weight


@pytest.mark.parametrize(
    ("tiling", "single"), [("supported", False), ("discouraged", False), ("internal", True)]
)
def test_a_model_that_tiles_internally_sees_the_whole_image(tiling, single, forest):
    network = Recording()
    descriptor = ModelDescriptor(architecture="test", scale=1, in_channels=3, out_channels=3, tiling=tiling)

    class OneModel:  # the engine's ModelSource protocol, serving this one network
        def get(self, name: str, strength: float | None = None) -> LoadedModel:
            return LoadedModel(network, descriptor)

    result = Enhancer(OneModel(), device="cpu", runtime="pytorch", batch_size=1).enhance(
        forest[:40, :36], EnhanceOptions(model="recording", tile=16)
    )
    np.testing.assert_array_equal(result, forest[:40, :36])
    windows = Recording.seen[1:]  # the first pass is the engine's memory probe
    assert windows and (windows == [(1, 3, 40, 36)]) is single  # the whole image, in one window
    # An explicit tile size is kept unless the model tiles by itself.


class Overflowing(torch.nn.Module):
    """A ×1 network whose intermediate values overflow fp16 (max 65504) but not fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 1e5) / 1e5


def test_reduced_precision_batches_with_nan_or_inf_are_rerun_in_fp32():
    loaded = LoadedModel(
        Overflowing(), ModelDescriptor(architecture="test", scale=1, in_channels=3, out_channels=3)
    )
    runner = ModelRunner(loaded, torch.device("cpu"), torch.float16)
    batch = torch.rand(2, 3, 8, 8) * 0.5 + 0.5
    assert not torch.isfinite(Overflowing()(batch.half())).all()  # fp16 alone would give Inf
    output = runner(batch)
    assert output.dtype == torch.float32 and runner.fallbacks == 1
    torch.testing.assert_close(output, batch)


def test_only_a_precision_narrower_than_fp32_is_checked_for_overflow():
    """fp16 overflows where fp32 does not; bf16 has fp32's range (the same exponent), so a bf16 result
    is not searched for NaN and Inf on every job."""
    ran: list[object] = []

    def run(precision: object) -> torch.Tensor:
        ran.append(precision)
        return torch.full((2,), float("nan") if precision != torch.float32 else 0.0)

    for narrow, checked in ((torch.float16, True), ("fp16-storage", True), (torch.bfloat16, False)):
        ran.clear()
        Fp32Rerun(narrow, torch.float32)(run)
        assert ran == ([narrow, torch.float32] if checked else [narrow])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> ModelStore:
    """Random tiny networks dropped in as user model files, where only the geometry matters."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    networks = {
        "gray-x2": Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=2),
        # ×2 RRDBNet: a ×4 trunk on a pixel-unshuffled input.
        "rrdb-x2": ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2),
    }
    for name, network in networks.items():
        tensors = {k: v.contiguous() for k, v in network.state_dict().items()}
        save_file(tensors, folder / f"{name}.safetensors")
    return ModelStore(models_dir=folder)


def test_gray_network_processes_each_colour_channel(tiny_models, forest):
    enhancer = Enhancer(tiny_models, device="cpu")
    crop = forest[:20, :30]
    result = enhancer.enhance(crop, EnhanceOptions(model="gray-x2"))
    assert result.shape == (40, 60, 3)
    gray = enhancer.enhance(crop[:, :, 1], EnhanceOptions(model="gray-x2"))
    np.testing.assert_array_equal(result[:, :, 1], gray)  # the green channel went through on its own


def test_size_multiple_is_respected_for_odd_sizes_and_tiles(tiny_models, forest):
    enhancer = Enhancer(tiny_models, device="cpu")
    assert tiny_models.get("rrdb-x2").descriptor.size_multiple == 4  # spandrel's, for the unshuffle
    crop = forest[:37, :23]
    whole = enhancer.enhance(crop, EnhanceOptions(model="rrdb-x2"))
    tiled = enhancer.enhance(crop, EnhanceOptions(model="rrdb-x2", tile=17))
    assert whole.shape == tiled.shape == (74, 46, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_constructor_rejects_bad_settings(model_store):
    with pytest.raises(ValueError, match="batch size"):
        Enhancer(model_store, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="unknown precision"):
        Enhancer(model_store, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="thread count"):
        Enhancer(model_store, device="cpu", threads=0)


def test_cpu_memory_budget_follows_the_memory_limit(monkeypatch):
    """Windows as large as the memory left within the limit: 2.5 GB by default, more when allowed."""
    held = resident_bytes()
    default = memory_budget(torch.device("cpu"))
    assert 256 << 20 <= default <= DEFAULT_MEMORY_LIMIT - held
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "8G")
    assert memory_budget(torch.device("cpu")) > default
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1.5G")
    assert memory_budget(torch.device("cpu")) < default
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="not a size"):
        memory_budget(torch.device("cpu"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc keeps freed memory; others differ")
def test_cpu_memory_budget_counts_freed_memory_as_free(monkeypatch):
    """Memory the C allocator freed but kept (256 MB in 64 KB blocks below a block still in use, so
    glibc cannot shrink its heap by itself) is free for the next job's windows: the budget does not
    depend on what ran before."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(resident_bytes() + (1 << 30)))
    before = memory_budget(torch.device("cpu"))
    held = resident_bytes()
    blocks = [libc.malloc(64 << 10) for _ in range(4096)]
    pin = libc.malloc(64 << 10)
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)  # resident
    for block in blocks:
        libc.free(block)
    try:
        assert resident_bytes() - held > 200 << 20  # freed, yet still held by the process
        after = memory_budget(torch.device("cpu"))
    finally:
        libc.free(pin)
    assert abs(after - before) < 64 << 20, (before >> 20, after >> 20)
