"""Face restorers: networks that take an aligned face crop and give back a restored one.

GFPGAN (the "clean" architecture of 1.2–1.4) and RestoreFormer load through spandrel's own detection;
any other network spandrel loads that keeps the size and takes RGB (a ×1 model) can be used on faces
too. Each takes and returns a 1×3×S×S float image in [0, 1]; the facts that differ per architecture
(value range, crop size) live here and nowhere else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from spandrel import ImageModelDescriptor, ModelLoader
from torch import Tensor

from image_enhancer.models.registry import UnsupportedModelError, load_model
from image_enhancer.models.tensors import as_fp32

#: spandrel's face architectures and the crop side they were trained on (FFHQ-aligned 512²).
FACE_ARCHITECTURES = {"GFPGAN": 512, "RestoreFormer": 512}
#: The crop side for other ×1 networks used on faces.
DEFAULT_CROP = 512


@dataclass(frozen=True)
class FaceRestorer:
    """A ready restorer: `architecture` (spandrel's id or our module name), crop `size`, and `run`
    (1×3×size×size in [0, 1] → the same)."""

    architecture: str
    size: int
    run: Callable[[Tensor], Tensor]


def face_architecture(state_dict: dict[str, Tensor]) -> str:
    """The face architecture spandrel recognises in the file ("GFPGAN", "RestoreFormer"), or ""."""
    from spandrel import MAIN_REGISTRY

    for support in MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(state_dict):
                found = support.architecture.id
                return found if found in FACE_ARCHITECTURES else ""
        except Exception:  # noqa: BLE001 - a detector tripping over an odd file has not found its own
            continue
    return ""


def is_face_model(state_dict: dict[str, Tensor]) -> bool:
    """Whether spandrel recognises the file as one of the face architectures."""
    return bool(face_architecture(state_dict))


def load_restorer(state_dict: dict[str, Tensor]) -> FaceRestorer:
    """The restorer in `state_dict` (fp32, eval mode, CPU). UnsupportedModelError when it is none."""
    if is_face_model(state_dict):
        return _face_architecture({k: as_fp32(v) for k, v in state_dict.items()})
    loaded = load_model(state_dict)  # our registry: every served architecture, or a clear refusal
    d = loaded.descriptor
    if d.scale != 1 or d.in_channels != 3 or d.out_channels != 3:
        raise UnsupportedModelError(
            f"a {d.architecture} ×{d.scale} model with {d.in_channels}→{d.out_channels} channels cannot "
            "restore faces: a face model keeps the size and takes RGB (GFPGAN, RestoreFormer, any ×1 model)"
        )
    module = loaded.module
    return FaceRestorer(d.architecture, max(DEFAULT_CROP, d.min_size), lambda x: module(x).clamp(0, 1))


def _face_architecture(state_dict: dict[str, Tensor]) -> FaceRestorer:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loaded = ModelLoader().load_from_state_dict(state_dict)
    except Exception as exc:  # noqa: BLE001 - any failure to fit an untrusted file is the file's fault
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UnsupportedModelError(f"a face model whose tensors do not fit its architecture: {detail}") \
            from exc
    if not isinstance(loaded, ImageModelDescriptor):
        raise UnsupportedModelError("not an image-to-image face model")
    loaded.model.eval().requires_grad_(False)
    arch = loaded.architecture.id
    if arch == "GFPGAN":
        module = loaded.model
        # GFPGAN works in [−1, 1]; its fixed noise buffers keep the result reproducible.
        def run(x: Tensor) -> Tensor:
            out = module(x * 2 - 1, return_rgb=False, randomize_noise=False)[0]
            return ((out + 1) / 2).clamp(0, 1)
    else:  # spandrel's call normalises RestoreFormer's input and output itself
        def run(x: Tensor) -> Tensor:
            return loaded(x).clamp(0, 1)
    return FaceRestorer(arch, FACE_ARCHITECTURES[arch], torch.inference_mode()(run))
