"""Tiny end-to-end training runs: both stages, export, reload through the store, enhance; resume; DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.models.registry import load_model
from image_enhancer.weights.manifest import load_manifest, packaged_manifest_path
from image_enhancer.weights.store import ModelStore
from image_enhancer_training.run import run_training, train_main

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A few iterations of a tiny compact model on the repository's test photos and dead leaves."""
    config: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "threads": 1,
        "checkpoint_every": 2,
        "model": {"arch": "SRVGGNetCompact", "scale": 4, "num_feat": 8, "num_conv": 2},
        "data": {
            "patch_size": 32,
            "batch_size": 2,
            "sources": [
                {
                    "kind": "folder",
                    "path": str(REPO_ROOT / "tests/data"),
                    "include": ["*.png"],
                    "cache": True,
                },
                {"kind": "dead_leaves", "weight": 0.5},
            ],
        },
        "validation": {
            "crops": 2,
            "crop_size": 32,
            "every": 0,
            "sources": [{"kind": "folder", "path": str(REPO_ROOT / "docs/samples")}],
        },
        "psnr": {"iterations": 4, "lr": 1e-3, "schedule": "constant"},
        "gan": {"iterations": 0},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_both_stages_export_reload_and_enhance(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(packaged_manifest_path().read_text())
    config = tiny_config(
        tmp_path,
        gan={"iterations": 2, "disc_feat": 8, "lr_g": 1e-3},
        export={"name": "tiny-x4", "dir": str(weights), "description": "test model"},
    )
    assert train_main([str(write_config(tmp_path / "tiny.json", config))]) == 0

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records if r["kind"] == "validation"} == {"psnr", "gan"}
    assert any("loss_d" in r for r in records)
    assert Image.open(run / "curves.png").size[0] > 0
    psnr = load_file(weights / "tiny-x4-psnr.safetensors")
    gan = load_file(weights / "tiny-x4-gan.safetensors")
    assert all(v.dtype == torch.float16 for v in psnr.values())
    assert any(not torch.equal(psnr[k], gan[k]) for k in psnr)  # the GAN stage changed the weights
    assert load_model(psnr).descriptor.scale == 4

    card = (weights / "cards/tiny-x4.md").read_text()
    assert "Strength sweep" in card and "tiny-x4-strength.png" in card
    assert (weights / "cards/tiny-x4-strength.png").is_file()
    assert (weights / "cards/tiny-x4-restoration.png").is_file()

    # The manifest keeps every other entry and gains our pair.
    data = json.loads((weights / "manifest.json").read_text())
    before = json.loads(packaged_manifest_path().read_text())
    others = [m for m in data["models"] if not m["name"].startswith("tiny-x4")]
    assert others == [m for m in before["models"] if not m["name"].startswith("tiny-x4")]
    ours = {m["name"]: m for m in data["models"] if m["name"].startswith("tiny-x4")}
    assert ours["tiny-x4-gan"]["pair"] == {"psnr": "tiny-x4-psnr", "gan": "tiny-x4-gan"}
    assert ours["tiny-x4-psnr"]["source"] == "ours"

    # Committed entries point into the repository's weights/ folder; these test files live in a temporary
    # folder, so look them up there as installed weights (same names, sha256 checks and pairing).
    for entry in ours.values():
        entry["files"][0]["sources"] = []
    (weights / "manifest.json").write_text(json.dumps(data))
    store = ModelStore(load_manifest(weights / "manifest.json"), weights_dir=weights)
    info = {m.name: m for m in store.list()}
    assert info["tiny-x4-gan"].has_strength and info["tiny-x4-gan"].installed
    photo = np.asarray(Image.open(REPO_ROOT / "tests/data/cups_192.png").convert("RGB"))[:24, :20]
    out = Enhancer(store, device="cpu").enhance(photo, EnhanceOptions(model="tiny-x4-gan", strength=0.5))
    assert out.shape == (96, 80, 3) and out.dtype == np.uint8


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    straight = tiny_config(tmp_path / "a")
    run_training(write_config(tmp_path / "a.json", straight))

    # Two iterations, then the same run asked for four: it resumes from the checkpoint at 2.
    first = tiny_config(tmp_path / "b", psnr={"iterations": 2})
    run_training(write_config(tmp_path / "b.json", first))
    resumed = run_training(write_config(tmp_path / "b.json", tiny_config(tmp_path / "b")))
    assert resumed.generator_state  # the PSNR stage ran again, from iteration 2
    records = [json.loads(line) for line in (tmp_path / "b/run/log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [2, 4]

    a = load_file(tmp_path / "a/run/psnr_generator.safetensors")
    b = load_file(tmp_path / "b/run/psnr_generator.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_bad_config_gives_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, data={"sources": [{"kind": "folder", "path": str(tmp_path / "none")}]})
    assert train_main([str(write_config(tmp_path / "bad.json", config))]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ddp_with_gloo_gives_the_same_weights_on_both_ranks(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, psnr={"iterations": 3}, validation={"sources": []})
    path = write_config(tmp_path / "ddp.json", config)
    out = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO_ROOT / "tests/ddp_train_worker.py"),
        str(path),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(out / "rank0.safetensors")
    rank1 = load_file(out / "rank1.safetensors")
    init = load_file(out / "init.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], atol=0, rtol=0)
    assert any(not torch.equal(rank0[k], init[k]) for k in rank0)  # it did train
