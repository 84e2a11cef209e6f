"""Face models for tests, made here without downloads: an identity restorer (changes no pixel), a
random-weight GFPGAN of the released 1.3/1.4 layout, a random-weight RestoreFormer, and a folder that
holds the first two, for the face pass's tests (engine, server, command line, cluster, GIMP)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.GFPGAN import GFPGAN

IDENTITY = "identity"
RANDOM_GFPGAN = "random-gfpgan"


def identity_state_dict() -> dict[str, torch.Tensor]:
    """A ×1 Compact network whose last layer is zero: it returns its input exactly."""
    state = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=1).state_dict()
    last = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    return {k: torch.zeros_like(v) if k.startswith(f"body.{last}.") else v for k, v in state.items()}


def random_gfpgan() -> dict[str, torch.Tensor]:
    """GFPGAN's "clean" 1.3/1.4 layout as spandrel builds it, random weights (seed 0), fp16."""
    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                 fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                 sft_half=True)
    return {k: v.half().contiguous() for k, v in net.state_dict().items()}


def random_restoreformer(
    ch: int = 64, n_embed: int = 1024, num_res_blocks: int = 2
) -> dict[str, torch.Tensor]:
    """RestoreFormer's layout (by default the published one) with random weights, none of them zero
    or alike, as trained ones (seed 0)."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    state = RestoreFormer(n_embed=n_embed, ch=ch, num_res_blocks=num_res_blocks).state_dict()
    generator = torch.Generator().manual_seed(1)
    for tensor in state.values():
        if tensor.is_floating_point():
            tensor.mul_(0.9 + 0.2 * torch.rand(tensor.shape, generator=generator))
            tensor.add_(0.01 * (torch.rand(tensor.shape, generator=generator) - 0.5))
    return state


def face_models_folder(folder: Path) -> Path:
    """`folder` with `random-gfpgan.safetensors` and `identity.safetensors` in it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_gfpgan(), folder / f"{RANDOM_GFPGAN}.safetensors")
    save_file(identity_state_dict(), folder / f"{IDENTITY}.safetensors")
    return folder


def home_with(home: Path, models_dir: Path) -> Path:
    """A data folder (IMAGE_ENHANCER_HOME) with the installed weights and `models_dir` as its models,
    and the user's OpenVINO cache as its own (GFPGAN is converted once per machine, not per test: two
    minutes on two cores)."""
    from image_enhancer.paths import runtime_cache_dir, weights_dir
    from image_enhancer.runtimes.openvino import export

    home.mkdir(parents=True, exist_ok=True)
    (home / "weights").symlink_to(weights_dir())
    (home / "models").symlink_to(models_dir)
    converted = runtime_cache_dir() / export.NAME
    converted.mkdir(parents=True, exist_ok=True)
    (home / export.NAME).symlink_to(converted)
    return home
