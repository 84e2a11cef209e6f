"""The card's held-out evaluation: both degradations, a reference model (kept outputs, timed), BRISQUE
and the (PSNR-Y, BRISQUE) strength sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from image_enhancer.weights.manifest import packaged_manifest_path
from image_enhancer_training.config import ConfigError, parse_config
from image_enhancer_training.evaluation import Row, below_line
from image_enhancer_training.export import export_models
from image_enhancer_training.run import TrainingResult
from image_enhancer_training.validation import Scores

REPO_ROOT = Path(__file__).resolve().parents[1]


def _compact(path: Path, seed: int, feat: int = 4) -> Path:
    torch.manual_seed(seed)
    save_file(Compact(num_feat=feat, num_conv=1, upscale=4).state_dict(), path)
    return path


def test_held_out_card_has_both_degradations_the_reference_brisque_sweep_and_speed(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(packaged_manifest_path().read_text())
    run = tmp_path / "run"
    run.mkdir()
    result = TrainingResult(
        run, _compact(run / "psnr.safetensors", 1), _compact(run / "gan.safetensors", 2),
        config_file=Path("training/configs/tiny.toml"),
    )
    reference = _compact(tmp_path / "reference.safetensors", 3, feat=8)
    config = parse_config({
        "output_dir": str(run),
        "model": {
            "arch": "SRVGGNetCompact", "num_feat": 4, "num_conv": 1,
            "init": "clean.safetensors", "init_blend": "blind.safetensors", "init_blend_weight": 0.25,
        },
        "data": {"sources": [{"kind": "dead_leaves"}]},
        "psnr": {"iterations": 0},
        "export": {
            "name": "tiny-x4", "dir": str(weights), "description": "test model",
            "limitations": "Not sharp enough yet.",
            "model_descriptions": {"psnr": "Photo — tiny, faithful"},
            "reference": str(reference), "brisque": True, "evaluation_degradations": ["bicubic", "train"],
            "reference_degradations": ["bicubic"],
            "strengths": [0.0, 0.5, 1.0],
            "evaluation": [
                {"kind": "folder", "path": str(REPO_ROOT / "tests/data"), "include": ["*_192.png"]}
            ],
        },
    })
    written = export_models(config, result, None)
    entries = {m["name"]: m for m in json.loads((weights / "manifest.json").read_text())["models"]}
    assert entries["tiny-x4-psnr"]["description"] == "Photo — tiny, faithful"  # what the plug-in lists
    assert entries["tiny-x4-gan"]["description"] == "test model (GAN fine-tune)."
    card = (weights / "cards/tiny-x4.md").read_text()
    assert "## Held-out photos, bicubic ×4 downscale" in card
    assert "## Held-out photos, the training degradations on every photo" in card
    assert card.count("| reference |") == 1 and "BRISQUE ↓" in card  # scored on bicubic inputs only
    assert "GAN model vs reference: BRISQUE" in card
    assert card.count("| 0.50 |") == 1 and "below the bicubic–reference line" in card
    assert "faster**" in card and "## Speed" in card
    blend = "the weight average 0.75·`clean.safetensors` + 0.25·`blind.safetensors`, not trained further"
    assert blend in card
    assert card.endswith("## Limitations\n\nNot sharp enough yet.\n")
    assert "Reproduce: `image-enhancer train training/configs/tiny.toml` (seed 0), after the runs" in card
    sweep = weights / "cards/tiny-x4-sweep.png"
    assert sweep in written and Image.open(sweep).size[0] == 760

    # The reference's outputs are kept (2 photos, bicubic inputs) and reused by the next export.
    kept = sorted((run / "reference-outputs").glob("*.png"))
    assert len(kept) == 2
    stamps = [p.stat().st_mtime_ns for p in kept]
    first = (weights / "tiny-x4-psnr.safetensors").read_bytes()
    export_models(config, result, None)
    assert (weights / "tiny-x4-psnr.safetensors").read_bytes() == first  # the same file, the same sha256
    assert [p.stat().st_mtime_ns for p in kept] == stamps
    def held_out(text: str) -> str:
        return text[text.index("## Held-out") : text.index("## Speed")]

    assert held_out((weights / "cards/tiny-x4.md").read_text()) == held_out(card)


def test_below_line_tells_the_good_side_of_bicubic_to_reference() -> None:
    def row(psnr: float, score: float) -> Row:
        return Row("x", Scores(psnr, 0.0, 0.0), score)

    bicubic, reference = row(30.0, 60.0), row(28.0, 20.0)  # the line: BRISQUE = 60 − 20·(30 − PSNR)
    assert below_line(row(29.0, 35.0), bicubic, reference)
    assert not below_line(row(29.0, 45.0), bicubic, reference)
    assert below_line(row(31.0, 70.0), bicubic, reference)  # beyond bicubic's PSNR the line goes on


def test_evaluation_degradations_are_checked() -> None:
    config = {"data": {"sources": [{"kind": "dead_leaves"}]}, "export": {"evaluation_degradations": ["jpeg"]}}
    with pytest.raises(ConfigError, match="evaluation_degradations"):
        parse_config(config)
    assert json.dumps(parse_config({"data": config["data"]}).export.evaluation_degradations) == '["bicubic"]'


def test_model_descriptions_name_the_pairs_ends_only() -> None:
    config = {"data": {"sources": [{"kind": "dead_leaves"}]}, "export": {"model_descriptions": {"a": "x"}}}
    with pytest.raises(ConfigError, match="model_descriptions has the keys 'psnr' and/or 'gan'"):
        parse_config(config)
