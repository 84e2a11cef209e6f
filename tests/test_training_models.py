"""Our committed models (weights/ie-compact-x4-*.safetensors): listed, verified, paired, and better than
bicubic on a photo that was held out of their training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_enhancer.weights.manifest import packaged_manifest_path
from image_enhancer.weights.store import ModelStore
from image_enhancer_training.degradations import bicubic_downscale, jpeg, quantize
from image_enhancer_training.metrics import psnr_y, sharpness
from image_enhancer_training.validation import bicubic_upscale

REPO_ROOT = Path(__file__).resolve().parents[1]
PSNR_MODEL, GAN_MODEL = "ie-compact-x4-psnr", "ie-compact-x4-gan"


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore()


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    """(1, 3, 192, 192) crop of the wallpaper the models were validated on but never trained on."""
    image = np.asarray(Image.open(REPO_ROOT / "tests/data/evening_glow_192.png").convert("RGB"))
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0


def _run(store: ModelStore, name: str, lr: torch.Tensor, strength: float | None = None) -> torch.Tensor:
    with torch.no_grad():
        return store.get(name, strength).module(lr).clamp(0, 1)


def test_our_pair_is_in_the_manifest_with_its_card(store: ModelStore) -> None:
    entries = {m["name"]: m for m in json.loads(packaged_manifest_path().read_text())["models"]}
    assert entries[PSNR_MODEL]["source"] == entries[GAN_MODEL]["source"] == "ours"
    assert entries[GAN_MODEL]["pair"] == {"psnr": PSNR_MODEL, "gan": GAN_MODEL}
    assert (REPO_ROOT / "weights" / entries[GAN_MODEL]["card"]).is_file()
    info = {m.name: m for m in store.list()}
    # Installed means present with the sha256 the manifest records (the store verifies it on load).
    assert info[GAN_MODEL].installed and info[GAN_MODEL].has_strength
    assert store.get(PSNR_MODEL).descriptor.architecture == "SRVGGNetCompact"


def test_psnr_model_beats_bicubic_on_a_held_out_photo(store: ModelStore, held_out: torch.Tensor) -> None:
    lr = bicubic_downscale(held_out, 4)
    bicubic = psnr_y(bicubic_upscale(lr, 4), held_out, border=4)
    ours = psnr_y(_run(store, PSNR_MODEL, lr), held_out, border=4)
    # Pebbles at ×4 are among the hardest textures (bicubic ≈ 22.5 dB); the card has the broad figures.
    assert ours > bicubic + 0.1, f"{ours:.2f} dB vs bicubic {bicubic:.2f} dB"


def test_psnr_model_beats_bicubic_on_noisy_jpeg_input(store: ModelStore, held_out: torch.Tensor) -> None:
    lr = bicubic_downscale(held_out, 4)
    noisy = lr + torch.randn(lr.shape, generator=torch.Generator().manual_seed(0)) * 10 / 255
    damaged = jpeg(quantize(noisy), [40])
    bicubic = psnr_y(bicubic_upscale(damaged, 4), held_out, border=4)
    ours = psnr_y(_run(store, PSNR_MODEL, damaged), held_out, border=4)
    assert ours > bicubic, f"{ours:.2f} dB vs bicubic {bicubic:.2f} dB"


def test_strength_trades_fidelity_for_sharpness(store: ModelStore, held_out: torch.Tensor) -> None:
    lr = bicubic_downscale(held_out, 4)
    outputs = [_run(store, GAN_MODEL, lr, alpha) for alpha in (0.0, 0.5, 1.0)]
    sharp = [sharpness(o) for o in outputs]
    psnr = [psnr_y(o, held_out, border=4) for o in outputs]
    assert sharp[0] < sharp[1] < sharp[2]
    assert psnr[0] > psnr[2]
