"""The teacher cache: computed once, resumable, refused when stale, and trained from (with `distill`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from spandrel.architectures.Compact import Compact

from image_enhancer_training.config import ConfigError, parse_config
from image_enhancer_training.run import run_training, train_main
from image_enhancer_training.teacher_cache import (
    CachedSamples,
    TeacherCacheError,
    build_teacher_cache,
    load_teacher,
    sample_path,
)


@pytest.fixture()
def teacher_file(tmp_path: Path) -> Path:
    """A tiny real ×4 network (random weights) standing in for x4plus, stored like a user's file."""
    torch.manual_seed(3)
    path = tmp_path / "teacher.safetensors"
    save_file(Compact(num_feat=4, num_conv=1, upscale=4).state_dict(), path)
    return path


def cache_config(tmp_path: Path, teacher: Path, **data: object) -> dict:
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 5,
        "threads": 1,
        "model": {"arch": "SRVGGNetCompact", "num_feat": 4, "num_conv": 1},
        "data": {
            "patch_size": 32,
            "batch_size": 2,
            "sources": [{"kind": "dead_leaves", "leaves": 200}],
            "teacher": str(teacher),
            "teacher_cache": str(tmp_path / "cache"),
            "teacher_cache_size": 5,
            **data,
        },
        "degradation": {"clean_prob": 0.5},
        "psnr": {"iterations": 2, "lr": 1e-3, "schedule": "constant", "distill": 0.0},
        "gan": {"iterations": 2, "disc_feat": 4, "lr_g": 1e-3, "distill": 0.5},
    }


def test_cache_holds_the_teachers_output_for_each_degraded_crop(tmp_path: Path, teacher_file: Path) -> None:
    config = parse_config(cache_config(tmp_path, teacher_file))
    folder = build_teacher_cache(config, progress=False)
    teacher = load_teacher(str(teacher_file), 4, torch.device("cpu"))
    for index in range(5):
        sample = load_file(sample_path(folder, index))
        assert sample["lq"].shape == (3, 8, 8)
        assert sample["hr"].shape == sample["teacher"].shape == (3, 32, 32)
        assert sample["lq"].dtype == torch.uint8
        with torch.no_grad():
            expected = teacher(sample["lq"][None].float() / 255).clamp(0, 1)[0]
        # The degraded input is 8-bit already; only the stored output is rounded to 8 bits.
        assert (sample["teacher"].float() - expected * 255).abs().max() <= 1.0
    assert json.loads((folder / "cache.json").read_text())["teacher"] == "teacher.safetensors"


def test_an_interrupted_build_resumes_with_the_same_samples(tmp_path: Path, teacher_file: Path) -> None:
    config = parse_config(cache_config(tmp_path, teacher_file))
    folder = build_teacher_cache(config, progress=False)
    before = {i: sample_path(folder, i).read_bytes() for i in range(5)}
    sample_path(folder, 3).unlink()
    config.data.teacher_cache_size = 7  # growing the cache keeps the samples already there
    build_teacher_cache(config, progress=False)
    assert all(sample_path(folder, i).read_bytes() == before[i] for i in range(5))
    assert sample_path(folder, 6).is_file() and not list(folder.glob("*.part"))


def test_a_cache_built_with_other_settings_is_refused(tmp_path: Path, teacher_file: Path) -> None:
    build_teacher_cache(parse_config(cache_config(tmp_path, teacher_file)), progress=False)
    other = cache_config(tmp_path, teacher_file)
    other["degradation"] = {"clean_prob": 0.9}
    with pytest.raises(TeacherCacheError, match=r"other settings \(degradation\)"):
        build_teacher_cache(parse_config(other), progress=False)
    with pytest.raises(TeacherCacheError, match="lacks 5 of 10 samples"):
        CachedSamples(parse_config(cache_config(tmp_path, teacher_file, teacher_cache_size=10)))


def test_cached_samples_flip_and_rotate_all_three_images_alike(tmp_path: Path, teacher_file: Path) -> None:
    config = parse_config(cache_config(tmp_path, teacher_file))
    folder = build_teacher_cache(config, progress=False)
    samples = CachedSamples(config)
    raw = [load_file(sample_path(folder, i)) for i in range(5)]
    for index in range(12):
        lq, hr, teacher = samples[index]
        assert torch.equal(samples[index][1], hr)  # a pure function of the index
        matches = [
            (i, flip, turns)
            for i in range(5)
            for flip in (False, True)
            for turns in range(4)
            if torch.equal(_transform(raw[i]["hr"], flip, turns), (hr * 255).round().to(torch.uint8))
        ]
        assert matches
        i, flip, turns = matches[0]
        for key, image in (("lq", lq), ("teacher", teacher)):
            assert torch.equal(_transform(raw[i][key], flip, turns), (image * 255).round().to(torch.uint8))


def _transform(image: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    return torch.rot90(image.flip(-1) if flip else image, turns, dims=(-2, -1))


def test_training_builds_the_cache_then_learns_from_it(tmp_path: Path, teacher_file: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cache_config(tmp_path, teacher_file)))
    assert train_main([str(path), "--teacher-cache-only"]) == 0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 5
    result = run_training(path)
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"psnr", "gan"}
    assert result.gan_weights is not None and result.gan_weights.is_file()
    # Distilling (GAN stage, distill 0.5) and not distilling give different weights from one start.
    plain = cache_config(tmp_path, teacher_file)
    plain["gan"]["distill"] = 0.0
    plain["output_dir"] = str(tmp_path / "plain")
    path.write_text(json.dumps(plain))
    other = run_training(path)
    a, b = load_file(result.gan_weights), load_file(other.gan_weights)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_distill_and_cache_settings_are_checked(tmp_path: Path, teacher_file: Path) -> None:
    bad = cache_config(tmp_path, teacher_file)
    bad["gan"]["distill"] = 1.5
    with pytest.raises(ConfigError, match="gan.distill must be between 0 and 1"):
        parse_config(bad)
    no_teacher = cache_config(tmp_path, teacher_file)
    no_teacher["data"]["teacher"] = ""
    with pytest.raises(ConfigError, match="teacher_cache needs data.teacher"):
        parse_config(no_teacher)


def test_the_distillation_schedule_of_our_pair_parses() -> None:
    from image_enhancer_training.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "training/configs/ie-compact-x4-distill.toml")
    assert config.data.teacher_cache and config.data.teacher_cache_size > 0
    assert config.psnr.distill == 0.0 and 0.0 < config.gan.distill < 1.0
    assert config.export.name == "ie-compact-x4" and config.export.brisque
    assert len({s.path for s in config.export.evaluation}) == 3  # photos from three other packages
