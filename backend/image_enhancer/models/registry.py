"""Detect a network from its state dict with spandrel and describe it for the engine.

spandrel's registry (MIT; only permissively licensed architectures, `spandrel_extra_arches` is never
installed) finds the architecture and infers every hyperparameter from key names and shapes; loading
into its module is strict, so a file that only looks like an architecture is refused, not half-loaded.
We serve the image-to-image models among them whose forward pass takes just the image.

What we know beyond spandrel (our names for an architecture and its hyperparameters, a tile's
context, key names, whether it is built on the meta device) comes from its file in
``architectures/``: RRDBNet (ESRGAN) and SRVGGNetCompact are built on the meta device and given the
file's tensors, so the big x4plus and every blended strength load without a random init to throw away.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from spandrel import MAIN_REGISTRY, ArchSupport, ImageModelDescriptor, ModelTiling
from spandrel import ModelDescriptor as SpandrelDescriptor
from torch import Tensor, nn

from image_enhancer import architectures
from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.models.tensors import as_fp32

StateDict = dict[str, Tensor]

#: spandrel architectures we detect but do not serve, and why (their forward pass needs more than
#: the image, or they only make sense on one kind of input).
_OWN_CALL = "spandrel runs it through a call of its own (extra inputs such as a noise level or JPEG quality)"
NOT_SERVED = {
    **dict.fromkeys(
        ["DnCNN", "DRUNet", "FBCNN", "IPT", "MMRealSR", "MixDehazeNet", "RetinexFormer"], _OWN_CALL
    ),
    "GFPGAN": "it is a face model: use it with --faces --face-model NAME (faces are aligned for it)",
    "RestoreFormer": "it is a face model: use it with --faces --face-model NAME (faces are aligned for it)",
    "LaMa": "it is an inpainting model (needs a mask)",
    "Uformer": "it needs square inputs",
}


class UnsupportedModelError(ValueError):
    """The state dict matches no served architecture."""


def served_architectures() -> list[str]:
    """spandrel's architecture ids we serve, in detection order."""
    ids = [a.architecture.id for a in MAIN_REGISTRY.architectures("detection")]
    return [i for i in ids if i not in NOT_SERVED]


def _summary(state_dict: StateDict) -> str:
    keys = list(state_dict)
    shown = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in keys[:4])
    more = f" … ({len(keys)} tensors)" if len(keys) > 4 else ""
    return shown + more if keys else "an empty state dict"


def canonical(state_dict: dict[str, Any]) -> StateDict:
    """A flat state dict of tensors, as `weights.safe_load` gives it (it unwraps checkpoints)."""
    bad = [str(k) for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise UnsupportedModelError(f"state dict holds non-tensor entries: {', '.join(bad[:4])}")
    if not state_dict:
        raise UnsupportedModelError("no architecture matches an empty state dict")
    return state_dict


def _detects(support: ArchSupport, state_dict: StateDict) -> bool:
    try:
        return bool(support.detect(state_dict))
    except Exception:  # noqa: BLE001 - a detector tripping over an odd file has simply not found its own
        return False


def detect(state_dict: StateDict) -> ArchSupport:
    for support in MAIN_REGISTRY.architectures("detection"):
        if _detects(support, state_dict):
            name = support.architecture.id
            if name in NOT_SERVED:
                raise UnsupportedModelError(f"this is a {name} model, not served: {NOT_SERVED[name]}")
            return support
    raise UnsupportedModelError(
        f"no supported architecture ({', '.join(served_architectures())}) matches this state dict: "
        f"{_summary(state_dict)}"
    )


def _spandrel_load(support: ArchSupport, state_dict: StateDict) -> SpandrelDescriptor:
    try:
        loaded = support.architecture.load(state_dict)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to fit an untrusted file is the file's fault
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UnsupportedModelError(
            f"{support.architecture.id} detected, but the tensors do not fit it: {detail[:400]}"
        ) from exc
    if not isinstance(loaded, ImageModelDescriptor) or loaded.purpose not in ("SR", "Restoration"):
        raise UnsupportedModelError(f"{support.architecture.id} models are not image-to-image; not served")
    return loaded


def _on_meta(support: ArchSupport, state_dict: StateDict) -> SpandrelDescriptor:
    """The architecture built on the meta device: shapes and facts only, nothing allocated."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in state_dict.items()}
    with torch.device("meta"):
        return _spandrel_load(support, meta)


def describe(state_dict: dict[str, Any]) -> ModelDescriptor:
    """The descriptor, from a network built on the meta device where the architecture allows it."""
    state_dict = canonical(state_dict)
    support = detect(state_dict)
    try:
        loaded = _on_meta(support, state_dict)
    except Exception:  # noqa: BLE001 - some architectures compute with tensors in __init__: build for real
        loaded = _spandrel_load(support, {k: as_fp32(v) for k, v in state_dict.items()})
    return _descriptor(loaded)


def load_model(state_dict: dict[str, Any]) -> LoadedModel:
    """Detect the architecture of `state_dict` and return the network in eval mode, fp32, on CPU."""
    state_dict = canonical(state_dict)
    support = detect(state_dict)
    fp32 = {k: as_fp32(v) for k, v in state_dict.items()}
    if architectures.meta_built(support.architecture.id):
        loaded = _on_meta(support, state_dict)
        facts = architectures.for_spandrel(support.architecture.id, _spandrel_hyperparameters(loaded))
        named = facts.module_names(fp32) if facts is not None and facts.module_names else fp32
        try:
            loaded.model.load_state_dict(named, strict=True, assign=True)
            if any(t.is_meta for t in (*loaded.model.parameters(), *loaded.model.buffers())):
                raise RuntimeError("tensors left on the meta device")
        except RuntimeError:  # another naming of the family (BSRGAN, ESRGAN+): spandrel renames it
            loaded = _spandrel_load(support, fp32)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # architectures' own deprecation chatter
            loaded = _spandrel_load(support, fp32)
    module: nn.Module = loaded.model
    module.eval().requires_grad_(False)
    return LoadedModel(module=module, descriptor=_descriptor(loaded))


def stored_state_dict(loaded: LoadedModel) -> StateDict:
    """The network's tensors under the names our weight files use (Real-ESRGAN's for RRDBNet, whose
    spandrel module keeps the original ESRGAN's sequential names); the module's own names otherwise."""
    state = loaded.module.state_dict()
    stored_names = architectures.get(loaded.descriptor.architecture).stored_names
    return stored_names(state) if stored_names is not None else state


def _descriptor(loaded: SpandrelDescriptor) -> ModelDescriptor:
    size = loaded.size_requirements
    architecture, hyperparameters, tile_pad = _known_facts(loaded)
    return ModelDescriptor(
        architecture=architecture,
        scale=loaded.scale,
        in_channels=loaded.input_channels,
        out_channels=loaded.output_channels,
        hyperparameters=hyperparameters,
        supports_half=loaded.supports_half,
        supports_bf16=loaded.supports_bfloat16,
        size_multiple=size.multiple_of,
        min_size=max(1, size.minimum),
        tile_pad=tile_pad,
        tiling={
            ModelTiling.SUPPORTED: "supported",
            ModelTiling.DISCOURAGED: "discouraged",
            ModelTiling.INTERNAL: "internal",
        }[loaded.tiling],
    )


def _spandrel_hyperparameters(loaded: SpandrelDescriptor) -> dict[str, Any]:
    return dict(getattr(loaded.model, "hyperparameters", {}))


def _known_facts(loaded: SpandrelDescriptor) -> tuple[str, dict[str, Any], int]:
    """The architecture name, hyperparameters under the names our files and tools use, and the
    context a tile needs: the architecture file's, else spandrel's class name and terms."""
    hp = _spandrel_hyperparameters(loaded)
    common = {
        "in_channels": loaded.input_channels, "out_channels": loaded.output_channels, "scale": loaded.scale
    }
    facts = architectures.for_spandrel(loaded.architecture.id, hp)
    if facts is None:
        return type(loaded.model).__name__, {**hp, **common}, 0
    named = {**common, **facts.hyperparameters(hp)} if facts.hyperparameters else {**hp, **common}
    return facts.name, named, facts.tile_pad(hp) if facts.tile_pad else 0
