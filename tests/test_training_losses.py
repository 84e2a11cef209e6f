"""Losses, the U-Net discriminator, EMA, the LR schedule and distillation from a real teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from image_enhancer.paths import weights_dir
from image_enhancer_training.config import ConfigError, PSNRStageConfig
from image_enhancer_training.discriminator import UNetDiscriminatorSN
from image_enhancer_training.ema import EMA
from image_enhancer_training.losses import (
    PerceptualLoss,
    charbonnier,
    discriminator_loss,
    generator_adversarial_loss,
)
from image_enhancer_training.run import load_teacher, run_training
from image_enhancer_training.stages import lr_at

VGG19_LAYOUT = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
]


def test_charbonnier_is_a_smooth_l1() -> None:
    a, b = torch.zeros(4), torch.tensor([0.0, 0.5, -0.5, 1.0])
    assert float(charbonnier(a, a)) == pytest.approx(1e-3)
    assert float(charbonnier(a, b)) == pytest.approx(float((a - b).abs().mean()), abs=2e-3)


def test_gan_losses_point_the_right_way() -> None:
    confident_real, confident_fake = torch.full((1, 1, 8, 8), 5.0), torch.full((1, 1, 8, 8), -5.0)
    assert float(discriminator_loss(confident_real, confident_fake)) < 0.02
    assert float(discriminator_loss(confident_fake, confident_real)) > 9
    assert float(generator_adversarial_loss(confident_real)) < float(
        generator_adversarial_loss(confident_fake)
    )


def test_unet_discriminator_gives_per_pixel_logits_with_spectral_norm() -> None:
    disc = UNetDiscriminatorSN(num_feat=8)
    assert disc(torch.rand(2, 3, 32, 48)).shape == (2, 1, 32, 48)
    assert any("parametrizations" in name for name, _ in disc.named_parameters())
    with pytest.raises(ValueError, match="multiples of 8"):
        disc(torch.rand(1, 3, 30, 32))


def test_perceptual_loss_loads_user_vgg_weights_safely(tmp_path: Path) -> None:
    # Random VGG19 weights stand in for the user's file: only loading and the loss's mechanics matter.
    layers, channels = [], 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(channels, int(item), 3, padding=1), torch.nn.ReLU()]
            channels = int(item)
    state = {f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    vgg = PerceptualLoss(tmp_path / "vgg19.safetensors")
    x = torch.rand(1, 3, 32, 32)
    assert float(vgg(x, x)) == 0.0
    assert float(vgg(x, torch.rand(1, 3, 32, 32))) > 0.0
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a VGG19 state dict"):
        PerceptualLoss(tmp_path / "other.safetensors")


def test_ema_warms_up_then_holds_its_decay() -> None:
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    before = ema.shadow.weight.clone()
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow.weight, 0.1 * before + 0.9)
    ema.updates = 100_000
    assert ema.current_decay() == 0.999


def test_lr_schedule_warms_up_and_anneals() -> None:
    config = PSNRStageConfig(iterations=1000, lr=1e-3, warmup=100, schedule="cosine")
    assert lr_at(config, 0) == pytest.approx(1e-5)
    assert lr_at(config, 100) == pytest.approx(1e-3)
    assert lr_at(config, 999) < 2e-5
    steps = PSNRStageConfig(iterations=1000, lr=1e-3, schedule="multistep", milestones=[300, 600])
    assert [lr_at(steps, i) for i in (0, 300, 600)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_distillation_trains_towards_the_teacher(model_store, tmp_path: Path) -> None:
    teacher = weights_dir() / "realesrgan-x4plus.safetensors"
    base = {
        "threads": 1,
        "model": {"arch": "SRVGGNetCompact", "num_feat": 8, "num_conv": 2},
        "data": {"patch_size": 32, "batch_size": 2, "sources": [{"kind": "dead_leaves"}]},
        "psnr": {"iterations": 2, "schedule": "constant", "lr": 1e-3},
    }
    results = {}
    for name, extra in (("plain", {}), ("distilled", {"teacher": str(teacher)})):
        config = {**base, "output_dir": str(tmp_path / name), "data": {**base["data"], **extra}}
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        run_training(tmp_path / f"{name}.json")
        results[name] = load_file(tmp_path / name / "psnr_generator.safetensors")
    assert any(not torch.equal(results["plain"][k], results["distilled"][k]) for k in results["plain"])
    with pytest.raises(ConfigError, match="×4 but the model is ×2"):
        load_teacher(str(teacher), 2, torch.device("cpu"))
