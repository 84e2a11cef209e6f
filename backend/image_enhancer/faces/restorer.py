"""Face restorers: networks that take an aligned face crop and give back a restored one.

GFPGAN (the "clean" architecture of 1.2–1.4) and RestoreFormer load through spandrel's own detection;
any other network spandrel loads that keeps the size and takes RGB (a ×1 model) can be used on faces
too. Each takes and returns a 1×3×S×S float image in [0, 1]; the facts that differ per architecture
(value range, crop size, the runtime it runs on) live here and nowhere else.

On the CPU a restorer runs on OpenVINO where it is installed and takes the network (``runtime.py``):
GFPGAN and RestoreFormer ran 1.6–1.9× faster there than on PyTorch on a 2-core AVX2 EPYC (README,
"Portraits: restoring faces"; ``bench/bench_faces.py``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from spandrel import ImageModelDescriptor, ModelLoader
from torch import Tensor, nn

from image_enhancer.models.registry import UnsupportedModelError, load_model
from image_enhancer.models.tensors import as_fp32
from image_enhancer.runtimes.cpu_network import OPENVINO, PYTORCH, CpuNetwork, check_runtime
from image_enhancer.runtimes.openvino import export

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceArchitecture:
    """crop: the side of the FFHQ-aligned crop it was trained on. runtime: where ``auto`` runs it on the
    CPU (measured). swappable: whether OpenVINO's converted graph takes another file's weights
    (``export.network``)."""

    crop: int
    runtime: str
    swappable: bool = True


#: spandrel's face architectures and their facts. Neither's weights can be swapped into a converted
#: graph: the converter folds GFPGAN's noise strengths into the fixed noise they scale, and computes
#: RestoreFormer's codebook norms; so each weights file is converted whole (once, then cached).
FACE_ARCHITECTURES = {
    "GFPGAN": FaceArchitecture(512, OPENVINO, swappable=False),
    "RestoreFormer": FaceArchitecture(512, OPENVINO, swappable=False),
}
#: The crop side for other ×1 networks used on faces.
DEFAULT_CROP = 512


@dataclass(frozen=True)
class FaceRestorer:
    """A ready restorer: `architecture` (spandrel's id or our module name), crop `size`, and its
    `network` (1×3×size×size in [0, 1] → the same, on the runtime it chose at its first call)."""

    architecture: str
    size: int
    network: CpuNetwork

    def run(self, crop: Tensor) -> Tensor:
        """1×3×size×size in [0, 1] → the restored crop, clamped to [0, 1]."""
        return self.network(crop)[0].clamp(0, 1)


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


def load_restorer(state_dict: dict[str, Tensor], runtime: str = "auto") -> FaceRestorer:
    """The restorer in `state_dict` (fp32, eval mode, CPU). UnsupportedModelError when it is none.
    `runtime`: "auto" (the architecture's measured choice), "openvino" or "pytorch"."""
    check_runtime(runtime)
    if is_face_model(state_dict):
        return _face_architecture({k: as_fp32(v) for k, v in state_dict.items()}, runtime)
    loaded = load_model(state_dict)  # our registry: every served architecture, or a clear refusal
    d = loaded.descriptor
    if d.scale != 1 or d.in_channels != 3 or d.out_channels != 3:
        raise UnsupportedModelError(
            f"a {d.architecture} ×{d.scale} model with {d.in_channels}→{d.out_channels} channels cannot "
            "restore faces: a face model keeps the size and takes RGB (GFPGAN, RestoreFormer, any ×1 model)"
        )
    size = max(DEFAULT_CROP, d.min_size)
    # OpenVINO only for what our tests run through it (its CPU plugin crashes on some architectures).
    verified = export.supports(d.architecture)
    chosen = (OPENVINO if verified else PYTORCH) if runtime == "auto" else runtime
    if chosen == OPENVINO and not verified:
        log.info("%s runs on PyTorch: not verified on OpenVINO", d.architecture)
        chosen = PYTORCH
    network = CpuNetwork(loaded.module, _check_crop(size), d.architecture, chosen, shape=(1, 3, size, size))
    return FaceRestorer(d.architecture, size, network)


def _check_crop(size: int) -> Tensor:
    """The input a converted restorer is checked on against PyTorch."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


class _Gfpgan(nn.Module):
    """GFPGAN as a [0, 1] → [0, 1] network: it works in [−1, 1]; its fixed noise buffers keep the result
    reproducible."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return (self.model(x * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2


class _RestoreFormer(nn.Module):
    """RestoreFormer as a [0, 1] → [0, 1] network, normalised as spandrel's call does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return (self.model((x - 0.5) / 0.5)[0] + 1) / 2


def _face_architecture(state_dict: dict[str, Tensor], runtime: str) -> FaceRestorer:
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
    arch = loaded.architecture.id
    facts = FACE_ARCHITECTURES[arch]
    module = _Gfpgan(loaded.model) if arch == "GFPGAN" else _RestoreFormer(loaded.model)
    network = CpuNetwork(
        module,
        _check_crop(facts.crop),
        arch,
        facts.runtime if runtime == "auto" else runtime,
        shape=(1, 3, facts.crop, facts.crop),
        swappable=facts.swappable,
    )
    return FaceRestorer(arch, facts.crop, network)
