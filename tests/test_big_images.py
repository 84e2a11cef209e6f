"""Big photos below the network's scale: each tile is shrunk as it is done, and memory follows the result.

A ×2 job on a ×4 model used to build the whole ×4 result (a 12-megapixel photo: 2.3 GB of floats) and
shrink it at the end. The tiler now shrinks each tile's blended share to the requested size at once; the
result must be what shrinking the whole would give, and the process must not hold a ×4 canvas.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from image_enhancer.engine import colour, pixels
from image_enhancer.engine.resample import Reduction
from image_enhancer.engine.tiling import Tiler, TileSettings
from image_enhancer.request import EnhanceOptions
from tests.conftest import REPO_ROOT

MODEL = "ie-compact-x4-psnr"  # a real ×4 network that is fast on a CPU
LEVEL = {np.uint8: 1, np.uint16: 257}  # one 8-bit level in the sample type


def _shrink(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reduction the engine applies to the whole ×4 result (colour.resize without its clamp)."""
    size = (height, width)
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]


@pytest.mark.parametrize(
    ("height", "width", "out_height", "out_width"),
    [(64, 48, 32, 24), (61, 47, 23, 35), (100, 100, 75, 75), (9, 13, 1, 5), (7, 300, 7, 113)],
)
def test_a_reduction_applied_piece_by_piece_sums_to_the_whole(height, width, out_height, out_width) -> None:
    torch.manual_seed(0)
    image = torch.rand(3, height, width) * 1.4 - 0.2  # values beyond [0, 1], as networks make them
    reduction = Reduction.bicubic((height, width), (out_height, out_width))
    out = torch.zeros(3, out_height, out_width)
    for top, bottom in [(0, height // 3), (height // 3, height)]:
        for left, right in [(0, 5), (5, width // 2), (width // 2, width)]:
            weights = torch.rand(bottom - top), torch.rand(right - left)
            share, y, x = reduction.apply(image[:, top:bottom, left:right], top, left, *weights)
            out[:, y : y + share.shape[1], x : x + share.shape[2]] += share
            rest = image[:, top:bottom, left:right] * (1 - weights[0].view(-1, 1) * weights[1].view(1, -1))
            share, y, x = reduction.apply(rest, top, left)
            out[:, y : y + share.shape[1], x : x + share.shape[2]] += share
    assert torch.allclose(out, _shrink(image, out_height, out_width), atol=2e-5)


def _tiny_network() -> torch.nn.Module:
    """A fixed random ×4 network (conv + pixel shuffle): its outputs overshoot [0, 1] and differ between
    overlapping tiles, so the blending and the reduction both matter."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, padding=1), torch.nn.PixelShuffle(4)).eval()


@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0, 2.7])
@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 64)])
def test_the_tiler_shrinks_tiles_exactly_as_it_would_shrink_its_whole_result(height, width, scale) -> None:
    network = _tiny_network()
    settings = TileSettings(tile=16, scale=4, overlap=4, pad=3)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    size = (round(height * scale), round(width * scale))
    with torch.no_grad():
        whole = Tiler(network, settings).run(image)
        shrunk = Tiler(network, settings).run(image, size=size)
    assert Tiler(network, settings).count_tiles(height, width) > 4
    assert shrunk.shape == (3, *size)
    assert torch.allclose(shrunk, _shrink(whole, *size), atol=2e-5)


@pytest.fixture(scope="module")
def engine(model_store):
    from image_enhancer.engine.enhancer import Enhancer

    return Enhancer(model_store, device="cpu")


def _photo(height: int, width: int, channels: int, dtype: type) -> np.ndarray:
    with Image.open(REPO_ROOT / "tests" / "data" / "forest_256.png") as im:
        rgb = np.asarray(im.convert("RGB"))[:height, :width].astype(np.float64) / 255
    if channels == 1:  # a plain H×W array
        values = rgb.mean(axis=2)
    elif channels == 4:  # a varying alpha with flat areas and edges
        alpha = np.zeros((height, width, 1))
        alpha[height // 4 :, : width // 2] = 1.0
        alpha[:, width // 2 :] = np.linspace(0, 1, width - width // 2)[None, :, None]
        values = np.concatenate([rgb, alpha], axis=2)
    else:
        values = rgb
    if dtype is np.float32:
        return values.astype(np.float32)
    maximum = np.iinfo(dtype).max
    return np.round(values * maximum).astype(dtype)


@pytest.mark.parametrize(
    ("channels", "dtype", "scale"),
    [(3, np.uint8, 2.0), (3, np.uint8, 1.5), (3, np.uint8, 3.0), (4, np.uint8, 2.0), (1, np.uint8, 3.0),
     (3, np.uint16, 2.0), (4, np.uint16, 1.5)],
)
def test_a_job_below_the_models_scale_equals_shrinking_its_x4_result(engine, channels, dtype, scale) -> None:
    image = _photo(29, 43, channels, dtype)  # odd sizes, several 16-pixel tiles
    result = engine.enhance(image, EnhanceOptions(model=MODEL, scale=scale, tile=16))
    # The reference: the same tiles at the model's own scale (float, so nothing is rounded), shrunk whole.
    floats = image.astype(np.float32) / np.iinfo(dtype).max
    whole = engine.enhance(floats, EnhanceOptions(model=MODEL, scale=4, tile=16))
    height, width = result.shape[:2]
    reference = colour.resize(pixels.to_tensor(whole), height, width)
    expected = pixels.from_tensor(reference, dtype)
    if channels == 1:
        expected = expected[:, :, 0]
    assert result.shape == expected.shape
    difference = np.abs(result.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= LEVEL[dtype], f"off by {difference.max()} at {np.argmax(difference)}"


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from image_enhancer.engine.enhancer import Enhancer, EnhanceOptions
    from image_enhancer.weights.store import ModelStore

    height, width, scale, tile = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    engine = Enhancer(ModelStore(), device="cpu")
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    engine.enhance(noise[: 2 * tile, : 2 * tile], EnhanceOptions(model=sys.argv[5], scale=scale, tile=tile))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = engine.enhance(noise, EnhanceOptions(model=sys.argv[5], scale=scale, tile=tile))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(result.shape[0], result.shape[1], (after - before) * 1024)
    """
)


def test_memory_of_a_x2_job_follows_the_result_not_the_x4_canvas(model_store) -> None:
    height, width = 1200, 1000
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(height), str(width), "2", "128", MODEL],
        capture_output=True, text=True, timeout=600, check=True,
    )
    out_height, out_width, grown = (int(value) for value in run.stdout.split()[-3:])
    assert (out_height, out_width) == (2 * height, 2 * width)
    x4_canvas = height * width * 16 * 3 * 4  # float32 RGB at the model's scale: 230 MB
    result = out_height * out_width * 3 * 4  # float32 RGB at the requested size: 58 MB
    # The job's growth over a warmed-up engine: the result (float, then its 8-bit copy), the input as
    # floats, one tile; the ×4 canvas alone would be four times the result.
    assert grown < result + x4_canvas / 2, f"the job grew the process by {grown / 1e6:.0f} MB"
