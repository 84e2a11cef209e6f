"""Training data sources, config parsing, checkpoints and metrics."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_enhancer_training.checkpoint import Checkpoint, load_latest, save_checkpoint
from image_enhancer_training.config import ConfigError, load_config, parse_config
from image_enhancer_training.data import (
    DataError,
    IterationSampler,
    PatchDataset,
    SourceConfig,
    ffhq_source,
    open_source,
)
from image_enhancer_training.metrics import brisque, psnr_y, ssim_y
from image_enhancer_training.procedural import dead_leaves

REPO_ROOT = Path(__file__).resolve().parents[1]
FOREST = REPO_ROOT / "tests/data/forest_256.png"


def _write_png(path: Path, size: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


@pytest.fixture()
def ffhq_root(tmp_path: Path) -> Path:
    """A miniature FFHQ as distributed: numbered sub-folders of PNGs, and the same as a zip."""
    root = tmp_path / "ffhq"
    for i in range(3):
        _write_png(root / "images1024x1024" / "00000" / f"{i:05d}.png", 64, 40 * i)
    _write_png(root / "thumbnails128x128" / "00000" / "00000.png", 32, 7)
    with zipfile.ZipFile(tmp_path / "images1024x1024.zip", "w") as archive:
        for png in sorted((root / "images1024x1024").rglob("*.png")):
            archive.write(png, png.relative_to(root).as_posix())
    return root


def test_folder_source_is_recursive_with_include_and_exclude(tmp_path: Path) -> None:
    for name in (
        "a/contents/images/2560x1600.jpg",
        "a/contents/images/1280x800.jpg",
        "b/deep/x/2560x1600.jpg",
    ):
        _write_png(tmp_path / name, 16, 1)
    (tmp_path / "notes.txt").write_text("not an image")
    everything = open_source(SourceConfig(kind="folder", path=str(tmp_path)))
    assert everything is not None and len(everything) == 3
    chosen = open_source(
        SourceConfig(kind="folder", path=str(tmp_path), include=["*/2560x1600.jpg"], exclude=["b/*"])
    )
    assert chosen is not None and chosen.names == ["a/contents/images/2560x1600.jpg"]


def test_ffhq_layout_reads_folders_and_zips(ffhq_root: Path) -> None:
    folder = ffhq_source(SourceConfig(kind="ffhq", path=str(ffhq_root)))
    assert len(folder) == 3
    assert tuple(folder.load(2).shape) == (3, 64, 64) and int(folder.load(2)[0, 0, 0]) == 80
    thumbs = ffhq_source(SourceConfig(kind="ffhq", path=str(ffhq_root), subset="thumbnails128x128"))
    assert len(thumbs) == 1
    # The zip is read in place, whether named directly or found next to a root without the folder.
    direct = ffhq_source(SourceConfig(kind="ffhq", path=str(ffhq_root.parent / "images1024x1024.zip")))
    assert direct.names == folder.names or len(direct) == 3
    assert torch.equal(direct.load(1), folder.load(1))
    beside = ffhq_source(SourceConfig(kind="ffhq", path=str(ffhq_root.parent)))
    assert beside.zip_path is not None and len(beside) == 3


def test_data_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source(SourceConfig(kind="folder", path=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="no images"):
        open_source(SourceConfig(kind="folder", path=str(tmp_path)))
    with pytest.raises(DataError, match="no FFHQ"):
        ffhq_source(SourceConfig(kind="ffhq", path=str(tmp_path)))
    with pytest.raises(DataError, match="unknown data source kind"):
        open_source(SourceConfig(kind="webcam"))
    _write_png(tmp_path / "small.png", 16, 3)
    dataset = PatchDataset([SourceConfig(kind="folder", path=str(tmp_path))], patch_size=32, seed=0)
    with pytest.raises(DataError, match="smaller than the 32-pixel"):
        dataset[0]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    broken = open_source(SourceConfig(kind="folder", path=str(tmp_path), include=["broken.png"]))
    with pytest.raises(DataError, match="cannot read training image"):
        broken.load(0)


def test_dead_leaves_are_reproducible_images() -> None:
    a = dead_leaves(48, torch.Generator().manual_seed(5))
    b = dead_leaves(48, torch.Generator().manual_seed(5))
    c = dead_leaves(48, torch.Generator().manual_seed(6))
    assert a.shape == (3, 48, 48) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.std()) > 0.05  # many leaves of different colours, not a flat fill


def test_patch_dataset_is_a_pure_function_of_seed_and_index() -> None:
    sources = [
        SourceConfig(kind="folder", path=str(FOREST.parent), include=["forest_256.png"]),
        SourceConfig(kind="dead_leaves", weight=0.5),
    ]
    first = PatchDataset(sources, patch_size=64, seed=3)
    again = PatchDataset(sources, patch_size=64, seed=3)
    patches = [first[i] for i in range(8)]
    assert all(p.shape == (3, 64, 64) and p.dtype == torch.float32 for p in patches)
    assert all(torch.equal(p, again[i]) for i, p in enumerate(patches))
    assert len({p.sum().item() for p in patches}) == 8


def test_iteration_sampler_gives_each_rank_its_own_indices() -> None:
    rank0 = list(IterationSampler(5, 7, batch_size=2, rank=0, world_size=2))
    rank1 = list(IterationSampler(5, 7, batch_size=2, rank=1, world_size=2))
    assert rank0 == [[20, 21], [24, 25]] and rank1 == [[22, 23], [26, 27]]


def test_config_loads_toml_and_json_and_names_bad_keys(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\narch = "srvgg"\nnum_feat = 8\n[[data.sources]]\nkind = "dead_leaves"\n')
    config = load_config(toml)
    assert config.model.num_feat == 8 and config.data.sources[0].kind == "dead_leaves"
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"model": {"num_feat": 8}, "data": {"sources": [{"kind": "dead_leaves"}]}}))
    assert load_config(as_json).model.num_feat == 8
    with pytest.raises(ConfigError, match="unknown key.*in model: num_feats"):
        parse_config({"model": {"num_feats": 8}, "data": {"sources": [{"kind": "dead_leaves"}]}})
    with pytest.raises(ConfigError, match="in export: alphas is now called strengths"):
        parse_config({"export": {"alphas": [0.5]}, "data": {"sources": [{"kind": "dead_leaves"}]}})
    with pytest.raises(ConfigError, match="psnr.iterations must be int"):
        parse_config({"psnr": {"iterations": "many"}, "data": {"sources": [{"kind": "dead_leaves"}]}})
    with pytest.raises(ConfigError, match="not a multiple of the scale"):
        parse_config({"data": {"patch_size": 30, "sources": [{"kind": "dead_leaves"}]}})
    with pytest.raises(ConfigError, match="data.sources is empty"):
        parse_config({})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.toml")


def test_a_config_extends_another_table_by_table(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        '[model]\nnum_feat = 8\nnum_conv = 4\n[psnr]\niterations = 100\nlr = 1e-3\n'
        '[[data.sources]]\nkind = "dead_leaves"\n[[data.sources]]\nkind = "dead_leaves"\nweight = 0.5\n'
    )
    (tmp_path / "runs").mkdir()
    child = tmp_path / "runs" / "child.toml"
    child.write_text(
        'extends = "../base.toml"\n[psnr]\niterations = 7\n[[data.sources]]\nkind = "dead_leaves"\n'
    )
    config = load_config(child)
    assert (config.model.num_feat, config.model.num_conv) == (8, 4)  # kept from the base
    assert (config.psnr.iterations, config.psnr.lr) == (7, 1e-3)  # one key overridden, its neighbour kept
    assert len(config.data.sources) == 1  # lists are replaced whole
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.toml")
    (tmp_path / "orphan.toml").write_text('extends = "missing.toml"\n')
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config(tmp_path / "orphan.toml")


def test_checkpoint_round_trip_restores_modules_and_optimiser(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 4)).sum().backward()
    optimizer.step()
    for i in (1, 2, 3):
        save_checkpoint(
            tmp_path,
            Checkpoint(
                "psnr",
                i,
                {"generator": model.state_dict()},
                {"generator": optimizer.state_dict()},
                {"note": i},
            ),
        )
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # older ones are pruned
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.iteration == 3 and ckpt.extra == {"note": 3}
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt.modules["generator"])
    fresh_opt.load_state_dict(ckpt.optimizers["generator"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh_opt.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    assert load_latest(tmp_path / "elsewhere") is None


def test_metrics_on_known_cases() -> None:
    image = (
        torch.from_numpy(np.asarray(Image.open(FOREST).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    )
    assert psnr_y(image, image) == float("inf")
    assert ssim_y(image, image) == pytest.approx(1.0)
    shifted = (image + 4 / 255).clamp(0, 1)
    # A uniform +4 step in RGB moves Y by 4·(65.481+128.553+24.966)/255 ≈ 3.44 steps (except clipped pixels).
    assert psnr_y(shifted, image) == pytest.approx(20 * np.log10(255 / 3.435), abs=0.3)
    noisy = (image + torch.randn(image.shape, generator=torch.Generator().manual_seed(0)) * 0.05).clamp(0, 1)
    assert ssim_y(noisy, image) < ssim_y(shifted, image) < 1.0


def test_brisque_scores_a_photo_as_more_natural_than_its_noisy_or_blurred_copies() -> None:
    photo = torch.from_numpy(np.asarray(Image.open(FOREST).convert("RGB")).copy()).permute(2, 0, 1) / 255.0
    gen = torch.Generator().manual_seed(0)
    noisy = (photo + 0.08 * torch.randn(photo.shape, generator=gen)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(photo[None], 5, stride=1, padding=2)[0]
    clean = brisque(photo)
    assert clean < brisque(noisy) and clean < brisque(blurred)
    assert brisque(photo) == pytest.approx(clean, rel=1e-9)  # the same score again
