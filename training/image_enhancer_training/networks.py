"""Builds generators from the engine's own architectures (never a private copy of them)."""

from __future__ import annotations

from torch import nn

from image_enhancer.models.rrdbnet import RRDBNet
from image_enhancer.models.srvgg import SRVGGNetCompact
from image_enhancer.weights.safe_load import load_state_dict

from .config import ConfigError, ModelConfig, expand_path


def build_generator(config: ModelConfig) -> nn.Module:
    """A fresh generator as the config describes, initialised from `config.init` when set."""
    if config.arch == "srvgg":
        model: nn.Module = SRVGGNetCompact(
            num_feat=config.num_feat, num_conv=config.num_conv, scale=config.scale
        )
    else:
        model = RRDBNet(
            scale=config.scale,
            num_feat=config.num_feat,
            num_block=config.num_block,
            num_grow_ch=config.num_grow_ch,
        )
    if config.init:
        path = expand_path(config.init)
        state = {k: v.float() for k, v in load_state_dict(path).items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"model.init {path} does not match model {config.arch} as configured: {exc}"
            ) from exc
    return model
