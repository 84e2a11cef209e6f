"""The ncnn runtime on the CPU and on Vulkan (llvmpipe, Mesa's software device, in CI), against PyTorch fp32.

Set IMAGE_ENHANCER_TEST_VULKAN=required (CI does) to make a missing Vulkan device a failure, not a skip.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

from image_enhancer import runtimes
from image_enhancer.engine import pixels
from image_enhancer.engine.choices import RUNTIMES
from image_enhancer.engine.devices import choose_device, discover
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.engine.tiling import Tiler, TileSettings
from image_enhancer.engine.watch import JobCancelled
from image_enhancer.models.registry import load_model, stored_state_dict
from image_enhancer.runtimes.memory import MEMORY_LIMIT_ENV, resident_bytes, return_freed_memory
from image_enhancer.runtimes.ncnn import export as ncnn_export
from image_enhancer.runtimes.ncnn import runner as ncnn_runner
from image_enhancer.runtimes.ncnn.runner import NcnnRunner

DATA = Path(__file__).parent / "data"
LEVEL = 1 / 255


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    image = np.asarray(Image.open(DATA / "forest_256.png").convert("RGB"))
    return pixels.to_tensor(image)


def random_rrdbnet(scale: int, num_feat: int, num_block: int, channels: int = 3, seed: int = 0):
    """A Real-ESRGAN RRDBNet (×4 trunk; ×2 and ×1 pixel-unshuffle their input) with random weights,
    as a stored state dict. Growth is 32 channels, as in every Real-ESRGAN file."""
    generator = torch.Generator().manual_seed(seed)
    growth, unshuffled = 32, channels * (4 // scale) ** 2

    def conv(name: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": torch.randn(out, inp, 3, 3, generator=generator) * 0.05,
                f"{name}.bias": torch.randn(out, generator=generator) * 0.05}

    state = conv("conv_first", num_feat, unshuffled)
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                out = num_feat if index == 5 else growth
                state |= conv(f"body.{block}.rdb{rdb}.conv{index}", out, num_feat + (index - 1) * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        state |= conv(name, num_feat, num_feat)
    return state | conv("conv_last", channels, num_feat)


def random_compact(num_feat: int, num_conv: int, scale: int, channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    network = SRVGGNetCompact(
        num_in_ch=channels, num_out_ch=channels, num_feat=num_feat, num_conv=num_conv, upscale=scale
    )
    for parameter in network.parameters():  # random weights of a realistic size, not the init's
        parameter.data.normal_(0, 0.05)
    return {k: v.clone() for k, v in network.state_dict().items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ncnn")


def plain(loaded, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.module(batch)


def software_vulkan() -> int:
    devices = runtimes.get("ncnn").gpus()
    if not devices:
        if os.environ.get("IMAGE_ENHANCER_TEST_VULKAN") == "required":
            pytest.fail("no Vulkan device found (install mesa-vulkan-drivers and libvulkan1)")
        pytest.skip("no Vulkan device on this machine")
    return devices[0].index


@pytest.mark.parametrize(
    "state",
    [
        random_rrdbnet(scale=4, num_feat=16, num_block=2),
        random_rrdbnet(scale=2, num_feat=16, num_block=1),
        random_rrdbnet(scale=1, num_feat=16, num_block=1),
        random_rrdbnet(channels=1, scale=2, num_feat=8, num_block=1),
        random_compact(num_feat=16, num_conv=3, scale=4),
        random_compact(num_feat=16, num_conv=2, scale=3),
        random_compact(channels=1, num_feat=8, num_conv=2, scale=1),
    ],
    ids=["rrdb-x4", "rrdb-x2", "rrdb-x1", "rrdb-gray-x2", "compact-x4", "compact-x3", "compact-gray-x1"],
)
def test_exported_graph_computes_what_pytorch_computes(state, cache):
    loaded = load_model(state)
    batch = torch.rand(2, loaded.descriptor.in_channels, 20, 28, generator=torch.Generator().manual_seed(1))
    output = NcnnRunner(loaded, cache)(batch)
    torch.testing.assert_close(output, plain(loaded, batch), atol=2e-5, rtol=0)


@pytest.mark.parametrize("model", ["realesrgan-x4plus-anime", "realesr-animevideov3"])
def test_real_weights_on_the_cpu_stay_within_one_level(model_store, photo, cache, model):
    loaded = model_store.get(model)
    batch = photo[None, :, 40:88, 100:148]
    difference = (NcnnRunner(loaded, cache)(batch) - plain(loaded, batch)).abs().max()
    assert difference < 0.05 * LEVEL  # fp32 throughout: rounding only


def test_exports_are_cached_by_content_and_each_strength_is_its_own(model_store, cache):
    def export(strength: float) -> list[ncnn_export.Stage]:
        loaded = model_store.get("ie-compact-x4-gan", strength)
        d = loaded.descriptor
        return ncnn_export.cached_export(stored_state_dict(loaded), d.architecture, d.hyperparameters, cache)

    (stage,) = export(0.3)
    stamp = stage.weights.stat().st_mtime_ns
    assert export(0.3) == [stage] and stage.weights.stat().st_mtime_ns == stamp  # reused, not rewritten
    (other,) = export(0.7)
    digest = ncnn_export.state_digest(stored_state_dict(model_store.get("ie-compact-x4-gan", 0.7)))
    assert other.param != stage.param and other.param.name.startswith(digest)


def test_the_upsampling_tail_in_strips_equals_the_whole_tail(cache):
    loaded = load_model(random_rrdbnet(scale=2, num_feat=16, num_block=1, seed=2))
    batch = torch.rand(1, 3, 46, 30, generator=torch.Generator().manual_seed(3))
    runner = NcnnRunner(loaded, cache, strip_pixels=15 * 5)  # 5 body rows (the body is at half size)
    assert [stage.halo for stage in runner.stages] == [0, 2]
    torch.testing.assert_close(runner(batch), plain(loaded, batch), atol=2e-5, rtol=0)


class CountedClears:
    """One of the runner's ncnn pools, its emptying counted."""

    def __init__(self, pool) -> None:
        self.pool, self.clears = pool, 0

    def clear(self) -> None:
        self.clears += 1
        self.pool.clear()


def test_ncnn_keeps_its_pools_through_a_pass_over_the_windows_and_a_while_after(
    model_store, cache, monkeypatch
):
    runner = NcnnRunner(model_store.get("realesr-animevideov3"), cache)
    runner._pools = tuple(CountedClears(pool) for pool in runner._pools)
    image = torch.rand(3, 40, 100, generator=torch.Generator().manual_seed(2))
    whole = runner(image[None])[0]
    assert [pool.clears for pool in runner._pools] == [1, 1]  # a call on its own empties them at once

    # Holding much of its memory limit, the runner empties them as the pass ends: once, after the last
    # window, also when the pass ends early.
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(resident_bytes() + (300 << 20)))
    tiler = Tiler(runner, TileSettings(tile=32, scale=4, pad=18))
    assert tiler.count_tiles(40, 100) > 2
    torch.testing.assert_close(tiler.run(image), whole, atol=1e-4, rtol=0)
    assert [pool.clears for pool in runner._pools] == [2, 2]
    cancelled = Tiler(runner, TileSettings(tile=32, scale=4, pad=18), cancelled=lambda: True)
    with pytest.raises(JobCancelled):
        cancelled.run(image)
    assert [pool.clears for pool in runner._pools] == [3, 3]

    # Holding little, it keeps them for the next job, and empties them once idle.
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1000G")
    monkeypatch.setattr(ncnn_runner, "POOLS_IDLE_S", 0.3)
    tiler.run(image)
    tiler.run(image)
    assert [pool.clears for pool in runner._pools] == [3, 3]
    deadline = time.monotonic() + 10
    while runner._pools[0].clears == 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)  # the first pass's timer, had it not been superseded, would have fired by now
    assert [pool.clears for pool in runner._pools] == [4, 4]
    # A job planned by what memory is left takes the kept pools back first.
    tiler.run(image)
    runner.memory_budget(give_back_freed=True)
    assert [pool.clears for pool in runner._pools] == [5, 5]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is read from Linux's /proc")
def test_x4plus_windows_are_sized_by_the_memory_ncnn_really_takes(model_store, photo, cache):
    """ncnn sizes x4plus's windows by its body and keeps a strip of its tail aside (the tail runs in
    strips): one 192² window takes no more than that, and not much less, which would waste windows on
    context (sized by the whole network before, a 256² photo became four windows of 196², 2.3× the
    work)."""
    runner = NcnnRunner(model_store.get("realesrgan-x4plus"), cache)
    batch = photo[None, :, :192, :192].contiguous()
    runner(batch[..., :16, :16])  # nets loaded
    return_freed_memory()
    before = resident_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) counts from here
    output = runner(batch)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmHWM"))
    taken = peak - before - output.numel() * output.element_size()
    planned = runner.bytes_per_pixel() * 192 * 192 + runner.strip_bytes
    assert 0.7 * planned < taken <= planned, (taken >> 20, planned >> 20)


def test_strength_blends_run_on_ncnn(model_store, photo, cache):
    loaded = model_store.get("ie-compact-x4-gan", 0.5)
    batch = photo[None, :, :32, :32]
    torch.testing.assert_close(NcnnRunner(loaded, cache)(batch), plain(loaded, batch), atol=1e-4, rtol=0)


def test_unknown_architectures_and_names_are_refused_by_the_exporter():
    with pytest.raises(ncnn_export.UnsupportedGraphError, match="PyTorch runtime"):
        ncnn_export.export({}, "SwinIR", {})
    hyperparameters = {"scale": 4, "num_conv": 1}
    with pytest.raises(ncnn_export.UnsupportedGraphError, match="body.0.weight"):
        ncnn_export.export({"model.0.weight": torch.zeros(1)}, "SRVGGNetCompact", hyperparameters)


def test_auto_never_picks_a_software_vulkan_device():
    chosen = choose_device("auto")
    assert not chosen.software
    software = [d for d in discover() if d.software]
    if software:
        assert choose_device(software[0].key).software  # only when asked for by index
        if not any(d.key.startswith("vulkan") and not d.software for d in discover()):
            with pytest.raises(ValueError, match="not available here; found: .*software"):
                choose_device("vulkan")


def test_the_registry_holds_each_runtime_the_command_line_offers_once():
    assert [runtime.name for runtime in runtimes.ALL] == [name for name in RUNTIMES if name != "auto"]
    assert runtimes.REFERENCE in runtimes.installed()
    assert runtimes.cpu_order() == [runtimes.get(d.runtime) for d in discover() if d.key == "cpu"]
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.get("tensorrt")


# Outside runtimes/, a runtime's name may be data only here: the command line's choices (kept free of
# torch) and the runtimes an architecture was verified on (a fact of the architecture).
NAMING_ALLOWED = {"engine/choices.py", "architectures/span.py", "architectures/rrdbnet.py",
                  "architectures/srvgg_compact.py"}  # fmt: skip


def test_nothing_outside_runtimes_names_a_runtime():
    """Adding a runtime touches runtimes/ (and the choices the command line offers), nothing else."""
    import ast

    package = Path(runtimes.__file__).parent.parent
    names = {runtime.name for runtime in runtimes.ALL}
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("runtimes/") or relative in NAMING_ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}  # fmt: skip
        found += [f"{relative}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.lower() in names and id(node) not in docstrings]  # fmt: skip
    assert found == []


def test_cpu_picks_the_fastest_runtime_for_this_cpu_and_each_can_be_asked_for():
    arm = platform.machine().lower() in ("arm64", "aarch64")
    assert choose_device("cpu").runtime == ("ncnn" if arm else "openvino")
    assert choose_device("auto").runtime == choose_device("cpu").runtime or choose_device("auto").key != "cpu"
    for runtime in ("pytorch", "openvino", "ncnn"):
        assert choose_device("cpu", runtime).runtime == runtime


# --- Vulkan (a real GPU on users' machines; Mesa's llvmpipe here and in CI) ------------------------------


@pytest.mark.parametrize(
    ("precision", "limit"),
    # fp32 is exact; fp16 storage rounds values between layers (within one level); fp16 arithmetic
    # drifts further through the deep network (measured up to 4 levels on x4plus).
    [("fp32", 1e-4), ("fp16-storage", LEVEL), ("fp16", 6 * LEVEL)],
)
def test_vulkan_matches_pytorch(model_store, photo, cache, precision, limit):
    index = software_vulkan()
    loaded = model_store.get("realesrgan-x4plus-anime")
    batch = photo[None, :, 60:92, 20:52]
    output = NcnnRunner(loaded, cache, vulkan=index, precision=precision)(batch)
    assert torch.isfinite(output).all()
    assert (output - plain(loaded, batch)).abs().max() < limit


def test_tiles_that_overflow_fp16_are_rerun_in_fp32(cache):
    """A network whose features exceed fp16's 65504 inside but not at its output."""
    index = software_vulkan()
    network = SRVGGNetCompact(num_feat=8, num_conv=1, upscale=1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(0.0)
        network.body[0].bias.fill_(1e5)  # every feature 100000: Inf in fp16
        network.body[1].weight.fill_(1.0)
        network.body[2].weight.fill_(1.0)  # the middle conv sums 9·8 of them …
        network.body[4].weight.fill_(1e-7)  # … and the last scales them back down
    loaded = load_model({k: v.clone() for k, v in network.state_dict().items()})
    batch = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    runner = NcnnRunner(loaded, cache, vulkan=index, precision="fp16-storage")
    output = runner(batch)
    assert runner.fallbacks == 1 and torch.isfinite(output).all()
    torch.testing.assert_close(output, plain(loaded, batch), atol=1e-3, rtol=1e-4)


def test_a_non_contiguous_batch_reaches_vulkan_intact(model_store, photo, cache):
    """ncnn borrows the array it is given; a temporary copy freed too early gave garbage rows."""
    index = software_vulkan()
    loaded = model_store.get("realesr-animevideov3")
    batch = photo[None, :, :48, :40].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last
    assert not batch.is_contiguous()
    output = NcnnRunner(loaded, cache, vulkan=index)(batch)
    assert (output - plain(loaded, batch)).abs().max() < 1e-4


def test_the_whole_engine_on_vulkan_equals_the_cpu(model_store, photo):
    index = software_vulkan()
    image = pixels.from_tensor(photo[:, 30:70, 50:110], np.uint8)
    rgba = np.dstack([image, np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1))])
    options = EnhanceOptions(model="realesr-animevideov3", tile=32)  # several tiles, blended
    on_gpu = Enhancer(model_store, device=f"vulkan:{index}", precision="fp32").enhance(rgba, options)
    on_cpu = Enhancer(model_store, device="cpu", runtime="pytorch").enhance(rgba, options)
    assert on_gpu.shape == (160, 240, 4)
    assert np.abs(on_gpu.astype(int) - on_cpu.astype(int)).max() <= 1
