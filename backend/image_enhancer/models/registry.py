"""Ordered registry of architectures and `load_model`, which detects one from a state dict.

Detection is strict: hyperparameters are read from shapes, a network with those hyperparameters is
built on the meta device (no memory), and its key set and every shape must match the state dict
exactly. A file for some other network is therefore refused instead of half-loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from image_enhancer.models import rrdbnet, srvgg
from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.models.tensors import as_fp32

StateDict = dict[str, Tensor]


class UnsupportedModelError(ValueError):
    """The state dict matches no known architecture."""


@dataclass(frozen=True)
class Architecture:
    name: str
    infer: Callable[[StateDict], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    describe: Callable[[dict[str, Any]], ModelDescriptor]
    # Maps legacy key naming onto the canonical one; identity for most architectures.
    canonicalise: Callable[[StateDict], StateDict] = lambda sd: sd

    def match(self, state_dict: StateDict) -> dict[str, Any] | None:
        """The hyperparameters if `state_dict` is exactly this architecture, else None."""
        try:
            hp = self.infer(state_dict)
            with torch.device("meta"):
                expected = self.build(hp).state_dict()
        except (KeyError, IndexError, ValueError):
            return None
        if expected.keys() != state_dict.keys():
            return None
        if any(tuple(expected[k].shape) != tuple(v.shape) for k, v in state_dict.items()):
            return None
        return hp


class Registry:
    """Architectures tried in a fixed order; registering a name twice is an error."""

    def __init__(self, architectures: Iterable[Architecture] = ()) -> None:
        self._items: list[Architecture] = []
        for arch in architectures:
            self.add(arch)

    def add(self, arch: Architecture) -> None:
        if any(a.name == arch.name for a in self._items):
            raise ValueError(f"architecture {arch.name!r} is already registered")
        self._items.append(arch)

    def __iter__(self):
        return iter(self._items)

    def names(self) -> list[str]:
        return [a.name for a in self._items]


def _rrdb_descriptor(hp: dict[str, Any]) -> ModelDescriptor:
    unshuffle = rrdbnet._UNSHUFFLE[hp["scale"]]
    return ModelDescriptor(
        architecture="RRDBNet",
        scale=hp["scale"],
        in_channels=hp["in_channels"],
        out_channels=hp["out_channels"],
        hyperparameters=dict(hp),
        size_multiple=unshuffle,
        min_size=unshuffle,
        # The receptive field is hundreds of pixels, but its influence fades: measured on a photo
        # with x4plus, a tile with 16 / 24 / 32 pixels of context differs from the untiled result
        # by up to 16 / 7 / 4 8-bit steps, and more context barely helps (5 steps at 48); the
        # 6-block anime model is within 1 step at 32. Blending overlapping tiles hides the rest.
        tile_pad=32 * unshuffle,
    )


def _srvgg_descriptor(hp: dict[str, Any]) -> ModelDescriptor:
    return ModelDescriptor(
        architecture="SRVGGNetCompact",
        scale=hp["scale"],
        in_channels=hp["in_channels"],
        out_channels=hp["out_channels"],
        hyperparameters=dict(hp),
        # Exact receptive-field radius: one pixel per 3×3 conv (first + num_conv + last).
        tile_pad=hp["num_conv"] + 2,
    )


def default_registry() -> Registry:
    return Registry(
        [
            Architecture(
                name="RRDBNet",
                infer=rrdbnet.infer_hyperparameters,
                build=lambda hp: rrdbnet.RRDBNet(**hp),
                describe=_rrdb_descriptor,
                canonicalise=rrdbnet.rename_old_esrgan,
            ),
            Architecture(
                name="SRVGGNetCompact",
                infer=srvgg.infer_hyperparameters,
                build=lambda hp: srvgg.SRVGGNetCompact(**hp),
                describe=_srvgg_descriptor,
            ),
        ]
    )


def strip_wrappers(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Unwrap training checkpoints (`params_ema` preferred over `params`) and `module.` prefixes."""
    for wrapper in ("params_ema", "params", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, dict):
            state_dict = inner
            break
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _summary(state_dict: StateDict) -> str:
    keys = list(state_dict)
    shown = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in keys[:4])
    more = f" … ({len(keys)} tensors)" if len(keys) > 4 else ""
    return shown + more if keys else "an empty state dict"


def detect(
    state_dict: StateDict, registry: Registry | None = None
) -> tuple[Architecture, dict[str, Any], StateDict]:
    """The architecture, hyperparameters and canonically named state dict; only shapes are read, so
    tensors on the meta device (e.g. from a file's header) work too."""
    registry = registry or default_registry()
    state_dict = strip_wrappers(state_dict)
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise UnsupportedModelError(f"state dict holds non-tensor entries: {', '.join(bad[:4])}")
    for arch in registry:
        canonical = arch.canonicalise(state_dict)
        hp = arch.match(canonical)
        if hp is not None:
            return arch, hp, canonical
    raise UnsupportedModelError(
        f"no known architecture ({', '.join(registry.names())}) matches this state dict: "
        f"{_summary(state_dict)}"
    )


def describe(state_dict: StateDict, registry: Registry | None = None) -> ModelDescriptor:
    arch, hp, _ = detect(state_dict, registry)
    return arch.describe(hp)


def load_model(state_dict: StateDict, registry: Registry | None = None) -> LoadedModel:
    """Detect the architecture of `state_dict` and return the network in eval mode, fp32, on CPU."""
    arch, hp, canonical = detect(state_dict, registry)
    # Built on the meta device and given the file's tensors: no random init to throw away.
    with torch.device("meta"):
        module = arch.build(hp)
    module.load_state_dict({k: as_fp32(v) for k, v in canonical.items()}, strict=True, assign=True)
    module.eval().requires_grad_(False)
    return LoadedModel(module=module, descriptor=arch.describe(hp))
