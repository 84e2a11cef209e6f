"""Builds generators from spandrel's architecture classes: what we train is what the engine serves.

Stored weights keep the names the engine's files use (Real-ESRGAN's for RRDBNet), so a trained RRDBNet
interpolates with x4plus; spandrel's ESRGAN module names are used only inside training.
"""

from __future__ import annotations

from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.PLKSR import RealPLKSR
from spandrel.architectures.SPAN import SPAN
from torch import Tensor, nn

from image_enhancer.architectures.rrdbnet import is_real_esrgan, to_module_names, to_real_esrgan_names
from image_enhancer.weights.interpolation import interpolate
from image_enhancer.weights.safe_load import load_state_dict

from .config import ConfigError, ModelConfig, expand_path

#: RRDBNet ×2 and ×1 work at ×4 on a pixel-unshuffled input, as Real-ESRGAN's do.
_UNSHUFFLE = {4: None, 2: 2, 1: 4}


def build_generator(config: ModelConfig) -> nn.Module:
    """A fresh generator as the config describes, initialised from `config.init` (blended with
    `config.init_blend` when that is set) when set."""
    model = _build(config)
    if config.init:
        path = expand_path(config.init)
        state = {k: v.float() for k, v in load_state_dict(path).items()}
        if config.init_blend:
            other = load_state_dict(expand_path(config.init_blend))
            try:
                state = interpolate(state, other, config.init_blend_weight)  # in fp32
            except ValueError as exc:
                raise ConfigError(f"model.init_blend cannot be blended with {path}: {exc}") from exc
        try:
            model.load_state_dict(module_names(state, config.arch))
        except RuntimeError as exc:
            raise ConfigError(
                f"model.init {path} does not match model {config.arch} as configured: {exc}"
            ) from exc
    return model


def _build(config: ModelConfig) -> nn.Module:
    if config.arch == "SRVGGNetCompact":
        return Compact(num_in_ch=3, num_out_ch=3, num_feat=config.num_feat, num_conv=config.num_conv,
                       upscale=config.scale)
    if config.arch == "RRDBNet":
        unshuffle = _UNSHUFFLE[config.scale]
        return ESRGAN(in_nc=3 * (unshuffle or 1) ** 2, out_nc=3, num_filters=config.num_feat,
                      num_blocks=config.num_block, scale=4, shuffle_factor=unshuffle)
    if config.arch == "SPAN":
        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=config.num_feat, upscale=config.scale)
    return RealPLKSR(dim=config.num_feat, n_blocks=config.num_block, upscaling_factor=config.scale)


def module_names(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """Stored names → the training module's names."""
    return to_module_names(state) if arch == "RRDBNet" and is_real_esrgan(state) else state


def stored_names(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """The training module's names → the names the engine's weight files use."""
    return to_real_esrgan_names(state) if arch == "RRDBNet" else state
