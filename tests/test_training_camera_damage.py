"""The camera degradation pipeline (real photos' damage): reproducible from a seed, configurable from
the config file, and producing the damage it claims — signal-dependent luma and chroma noise, JPEG
blocks, chroma subsampling, double compression."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from image_enhancer_training.config import ConfigError, parse_config
from image_enhancer_training.degradations import (
    CameraParams,
    DegradationConfig,
    Degrader,
    jpeg,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from image_enhancer_training.metrics import blockiness

REPO_ROOT = Path(__file__).resolve().parents[1]


def _forest() -> torch.Tensor:
    array = np.asarray(Image.open(REPO_ROOT / "tests/data/forest_256.png").convert("RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255.0


def _camera(seed: int = 0, **changes: object) -> Degrader:
    return Degrader(DegradationConfig(pipeline="camera", camera=CameraParams(**changes)), 4, seed)


NOISE_ONLY = {
    "blur_prob": 0.0, "resize_steps": (1, 1), "jpeg_prob": 0.0, "double_jpeg_prob": 0.0, "noise_prob": 1.0,
}


def test_the_camera_pipeline_is_reproducible_from_its_seed() -> None:
    hr = _forest().repeat(3, 1, 1, 1)
    first = _camera(5)(hr)
    assert first.shape == (3, 3, 64, 64)
    assert torch.equal(first, _camera(5)(hr))
    assert not torch.equal(first, _camera(6)(hr))
    degrader = _camera(5)
    degrader(hr)
    degrader.reseed(5)
    assert torch.equal(degrader(hr), first)
    assert torch.equal(first, torch.round(first * 255) / 255)  # 8-bit, as a saved photo


def test_camera_noise_grows_with_the_light() -> None:
    levels = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)
    flat = levels.expand(3, 3, 128, 128).contiguous()
    degrader = _camera(1, **NOISE_ONLY, read_noise=(1.0, 1.0), shot_noise=(8.0, 8.0), chroma_noise=(0.0, 0.0))
    luma = rgb_to_ycbcr(degrader(flat))[:, 0] * 255
    deviation = luma.flatten(1).std(dim=1)
    expected = torch.sqrt(1.0 + 64.0 * levels.flatten())  # √(read² + shot²·Y)
    torch.testing.assert_close(deviation, expected, rtol=0.15, atol=0.3)
    assert deviation[0] < deviation[1] < deviation[2]


def test_chroma_noise_is_set_apart_from_luma_noise_and_grainier() -> None:
    flat = torch.full((2, 3, 128, 128), 0.5)
    grey = rgb_to_ycbcr(_camera(2, **NOISE_ONLY, chroma_noise=(0.0, 0.0))(flat))
    coloured = rgb_to_ycbcr(_camera(2, **NOISE_ONLY, chroma_noise=(2.0, 2.0))(flat))
    assert float(grey[:, 1:].std()) * 255 < 0.5  # luma noise only: rounding is all the chroma gets
    assert float(coloured[:, 1:].std()) * 255 > 2.0
    # Smoothed over `chroma_grain` pixels: neighbouring chroma noise samples are correlated.
    cb = coloured[:, 1] - coloured[:, 1].mean()
    correlation = float((cb[:, :, 1:] * cb[:, :, :-1]).mean() / cb.var())
    assert correlation > 0.3
    luma = coloured[:, 0] - coloured[:, 0].mean()
    assert abs(float((luma[:, :, 1:] * luma[:, :, :-1]).mean() / luma.var())) < 0.15


def test_low_quality_jpeg_leaves_its_grid_on_the_input() -> None:
    hr = _forest().repeat(4, 1, 1, 1)
    plain = {"blur_prob": 0.0, "noise_prob": 0.0, "resize_steps": (1, 1), "double_jpeg_prob": 0.0}
    blocky = _camera(3, **plain, jpeg_quality=(30, 35))(hr)
    clean = _camera(3, **plain, jpeg_prob=0.0)(hr)
    assert np.mean([blockiness(x, 1) for x in blocky]) > 1.3
    assert np.mean([blockiness(x, 1) for x in clean]) < 1.1


def test_jpeg_honours_the_chroma_subsampling() -> None:
    # Fine colour detail: a red/green checkerboard of 1-pixel squares (equal luma is not needed).
    checker = (torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2
    image = torch.stack([checker, 1 - checker, torch.zeros(64, 64, dtype=torch.long)]).float()[None]
    full = jpeg(image, [90], ["4:4:4"])
    halved = jpeg(image, [90], ["4:2:0"])
    assert float((full - image).abs().mean()) < float((halved - image).abs().mean()) / 2
    assert torch.equal(jpeg(image, [90]), halved)  # Pillow's default is 4:2:0

    def sampling(x: torch.Tensor, sub: str) -> int:
        buffer = io.BytesIO()
        array = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(array).save(buffer, format="JPEG", quality=90, subsampling=sub)
        return JpegImagePlugin.get_sampling(Image.open(buffer))

    assert [sampling(image, s) for s in ("4:4:4", "4:2:2", "4:2:0")] == [0, 1, 2]


def test_double_compression_damages_more_than_the_last_compression_alone() -> None:
    hr = _forest().repeat(4, 1, 1, 1)
    plain = {"blur_prob": 0.0, "noise_prob": 0.0, "resize_steps": (1, 1), "jpeg_quality": (70, 70),
             "subsampling_probs": {"4:2:0": 1.0}}
    once = _camera(4, **plain, double_jpeg_prob=0.0)(hr)
    twice = _camera(4, **plain, double_jpeg_prob=1.0, first_jpeg_quality=(40, 40))(hr)
    clean = _camera(4, **plain, jpeg_prob=0.0, double_jpeg_prob=0.0)(hr)
    assert float((twice - clean).square().mean()) > 1.3 * float((once - clean).square().mean())


def test_resize_chains_and_blur_soften_the_input() -> None:
    hr = _forest().repeat(4, 1, 1, 1)
    quiet = {"noise_prob": 0.0, "jpeg_prob": 0.0, "double_jpeg_prob": 0.0}
    sharp = _camera(7, **quiet, blur_prob=0.0, resize_steps=(1, 1))(hr)
    soft = _camera(7, **quiet, blur_prob=1.0, blur_sigma=(1.2, 1.2), resize_steps=(3, 3),
                   resize_range=(0.6, 0.7))(hr)

    def detail(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert detail(soft) < 0.8 * detail(sharp)


def test_ycbcr_round_trips() -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, rtol=0, atol=1e-5)


def test_clean_share_still_applies_to_the_camera_pipeline() -> None:
    hr = _forest().repeat(2, 1, 1, 1)
    config = DegradationConfig(pipeline="camera", clean_prob=1.0 - 1e-9)
    out = Degrader(config, 4, 0)(hr)
    bicubic = Degrader(DegradationConfig(clean_prob=1.0), 4, 0)(hr)
    assert torch.equal(out, bicubic)


def test_the_camera_pipeline_is_set_in_the_config_and_checked() -> None:
    base = {"data": {"sources": [{"kind": "dead_leaves"}]}}
    config = parse_config({**base, "degradation": {
        "pipeline": "camera",
        "camera": {"jpeg_quality": [30, 95], "subsampling_probs": {"4:2:0": 0.5, "4:4:4": 0.5},
                   "double_jpeg_prob": 0.5, "shot_noise": [2, 10]},
    }})
    assert config.degradation.pipeline == "camera"
    assert config.degradation.camera.jpeg_quality == (30, 95)
    assert config.degradation.camera.shot_noise == (2.0, 10.0)
    bad = [
        ({"pipeline": "phone"}, "pipeline"),
        ({"camera": {"jpeg_quality": [30, 101]}}, "jpeg_quality"),
        ({"camera": {"subsampling_probs": {"4:1:1": 1.0}}}, "subsampling_probs"),
        ({"camera": {"resize_steps": [0, 2]}}, "resize_steps"),
        ({"camera": {"noise_prob": 1.5}}, "noise_prob"),
        ({"camera": {"chroma_noiz": [1, 2]}}, "chroma_noiz"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "degradation": table})


def test_the_shipped_real_damage_config_uses_the_camera_pipeline() -> None:
    from image_enhancer_training.config import load_config

    config = load_config(REPO_ROOT / "training/configs/ie-compact-x4-damage.toml")
    cam = config.degradation.camera
    assert config.degradation.pipeline == "camera"
    assert cam.jpeg_quality == (30, 95) and cam.double_jpeg_prob > 0
    assert set(cam.subsampling_probs) == {"4:4:4", "4:2:2", "4:2:0"}
    assert config.data.teacher and config.data.teacher_cache  # the teacher on the same damaged inputs
    assert config.gan.distill > 0
    assert dataclasses.asdict(config.degradation)["camera"]["noise_prob"] > 0.5


def test_the_real_damage_config_trains_two_steps_per_stage_and_scores_artefacts(tmp_path: Path) -> None:
    """The shipped config with a tiny network and data: teacher cache on camera-damaged crops, two
    steps of each stage, and the card's "damaged" evaluation with its artefact table."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    from image_enhancer.weights.manifest import packaged_manifest_path
    from image_enhancer_training.run import run_training

    torch.manual_seed(3)
    teacher = tmp_path / "teacher.safetensors"  # a tiny real ×4 network standing in for x4plus
    save_file(Compact(num_feat=4, num_conv=1, upscale=4).state_dict(), teacher)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(packaged_manifest_path().read_text())
    photos = f'{{ kind = "folder", path = "{REPO_ROOT / "tests/data"}", include = ["*_192.png"] }}'
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
extends = "{REPO_ROOT / "training/configs/ie-compact-x4-damage.toml"}"
output_dir = "{tmp_path / "run"}"
checkpoint_every = 2
[model]
num_feat = 4
num_conv = 1
init = ""
[data]
patch_size = 64
batch_size = 2
sources = [{{ kind = "dead_leaves", leaves = 200 }}]
teacher = "{teacher}"
teacher_cache = "{tmp_path / "cache"}"
teacher_cache_size = 4
[validation]
crops = 1
crop_size = 64
sources = [{photos}]
[psnr]
iterations = 2
warmup = 0
[gan]
iterations = 2
disc_feat = 4
[export]
name = "tiny-damage"
dir = "{weights}"
brisque = false
reference = "{teacher}"
evaluation_crops = 2
evaluation_crop_size = 128
evaluation = [{photos}]
""")
    result = run_training(config)
    cache = json.loads((tmp_path / "cache/cache.json").read_text())
    assert cache["degradation"]["pipeline"] == "camera"  # the teacher saw camera-damaged inputs
    assert result.gan_weights is not None and result.gan_weights.is_file()
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    validated = {(r["stage"], r["iteration"]) for r in log if r["kind"] == "validation"}
    assert validated == {("psnr", 2), ("gan", 2)}
    card = (weights / "cards/tiny-damage.md").read_text()
    assert "the damage of real photos (mild Gaussian blur σ 0.3–1.2" in card
    assert "## Held-out photos, damaged ×4 (mild blur, camera noise, JPEG q 30–90; fixed seed)" in card
    section = card[card.index("### Artefacts on these photos") :]
    assert "| ours, strength 0.5 |" in section and "| teacher | " in section
    assert "| the ground truths themselves | — |" in section and "| mesh ↓ (1.00: no pixel grid) |" in section
    assert "Sharp end: blockiness" in section


def test_a_native_x2_model_learns_from_a_x4_teacher_downscaled(tmp_path: Path) -> None:
    """ie-compact-x2-damage.toml with a tiny network: x4 teacher outputs brought down to ×2 in the
    cache, two steps per stage, and weights the engine's loader reads as a ×2 Compact model."""
    from safetensors.torch import load_file, save_file
    from spandrel.architectures.Compact import Compact

    from image_enhancer.models.registry import load_model
    from image_enhancer_training.run import run_training
    from image_enhancer_training.teacher_cache import load_teacher, sample_path

    torch.manual_seed(4)
    teacher = tmp_path / "teacher.safetensors"
    save_file(Compact(num_feat=4, num_conv=1, upscale=4).state_dict(), teacher)
    with pytest.raises(ConfigError, match="set data.teacher_resize"):
        load_teacher(str(teacher), 2, torch.device("cpu"))
    config = tmp_path / "tiny-x2.toml"
    config.write_text(f"""
extends = "{REPO_ROOT / "training/configs/ie-compact-x2-damage.toml"}"
output_dir = "{tmp_path / "run"}"
[model]
num_feat = 4
num_conv = 1
[data]
patch_size = 32
batch_size = 2
sources = [{{ kind = "dead_leaves", leaves = 200 }}]
teacher = "{teacher}"
teacher_cache = "{tmp_path / "cache"}"
teacher_cache_size = 3
[validation]
sources = []
[psnr]
iterations = 2
warmup = 0
[gan]
iterations = 2
disc_feat = 4
[export]
name = ""
""")
    result = run_training(config)
    sample = load_file(sample_path(tmp_path / "cache", 0))
    assert sample["lq"].shape == (3, 16, 16) and sample["teacher"].shape == sample["hr"].shape == (3, 32, 32)
    with torch.no_grad():
        big = load_teacher(str(teacher), 4, torch.device("cpu"))(sample["lq"][None].float() / 255)
    expected = torch.nn.functional.interpolate(big, size=(32, 32), mode="bicubic", antialias=True)
    assert (sample["teacher"].float() - expected[0].clamp(0, 1) * 255).abs().max() <= 1.0
    assert result.gan_weights is not None
    served = load_model(load_file(result.gan_weights))
    assert served.scale == 2
    assert served.module(torch.rand(1, 3, 12, 12)).shape == (1, 3, 24, 24)


def test_the_damage_report_scores_an_existing_pair_and_draws_its_sheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    from image_enhancer_training.damage_report import main

    def compact(name: str, seed: int, feat: int = 4) -> Path:
        torch.manual_seed(seed)
        save_file(Compact(num_feat=feat, num_conv=1, upscale=4).state_dict(), tmp_path / name)
        return tmp_path / name

    psnr, gan = compact("a-psnr.safetensors", 1), compact("a-gan.safetensors", 2)
    reference = compact("ref.safetensors", 3, feat=8)
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({
        "data": {"sources": [{"kind": "dead_leaves"}]},
        "export": {"reference": str(reference), "evaluation": [
            {"kind": "folder", "path": str(REPO_ROOT / "tests/data"), "include": ["*_192.png"]}
        ]},
    }))
    sheet = tmp_path / "sheet.png"
    argv = [str(config), "--psnr", str(psnr), "--gan", str(gan), "--crops", "2", "--crop-size", "128",
            "--keep", str(tmp_path / "kept"), "--sheet", str(sheet), "--sheet-rows", "2",
            "--sheet-tile", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "## Held-out photos, damaged ×4" in out and "2 crops of 128²" in out
    table = out[out.index("### Artefacts on these photos") :].splitlines()
    labels = [line.split("|")[1].strip() for line in table if line.startswith("| ") and "---" not in line]
    assert labels == [
        "", "bicubic", "ours, strength 0 (`a-psnr`)", "ours, strength 0.5", "ours, strength 1 (`a-gan`)",
        "ref", "the ground truths themselves",
    ]
    assert "| ours, strength 0.5 |" in out and "PSNR-Y vs ref (dB)" in out
    assert len(list((tmp_path / "kept").glob("*.png"))) == 2  # the reference's outputs, kept
    # bicubic, three strengths, the reference, the ground truth; a caption strip and two rows of tiles.
    assert Image.open(sheet).size == (6 * 64, 16 + 2 * 64)
