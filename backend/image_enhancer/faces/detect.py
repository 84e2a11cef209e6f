"""Find faces and their five landmarks with MTCNN's cascade (P-Net → R-Net → O-Net).

Coordinates are in pixels of the image given, pixel centres at integers. The networks are built once
per detector from the pinned weights and run on the CPU, on OpenVINO or PyTorch (``runtime.py``): they
are tiny, and a portrait takes a fraction of a second.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms, roi_align

from image_enhancer.faces.detector_weights import load_arrays
from image_enhancer.faces.mtcnn import ONet, PNet, RNet
from image_enhancer.runtimes.cpu_network import OPENVINO, CpuNetwork, check_runtime

#: Smallest face side searched for, in pixels of the image searched.
MIN_FACE = 20
#: The pyramid's step between scales (the published value).
PYRAMID_STEP = 0.709
#: Face probability each stage needs (P-Net, R-Net, O-Net). The last is stricter than the published
#: 0.7: on the astronaut photo a fitting on her suit scores 0.86, her face 0.9999.
THRESHOLDS = (0.6, 0.7, 0.9)
#: Windows the proposal stages keep at most, so a busy image cannot exhaust memory.
MAX_PROPOSALS = 20_000
#: Where ``auto`` runs the three networks on the CPU: OpenVINO detected 1.6–3× faster than PyTorch on a
#: 2-core AVX2 EPYC (README, "Portraits: restoring faces"; ``bench/bench_faces.py``).
RUNTIME = OPENVINO


@dataclass(frozen=True)
class Face:
    """box: (x1, y1, x2, y2) edges; landmarks: 5×2 (left eye, right eye, nose, mouth left, mouth
    right; "left" as seen in the image); score: O-Net's face probability."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def scaled(self, sx: float, sy: float) -> Face:
        """The same face in an image resized by (sx, sy) (edges scale; centres keep their grid)."""
        x1, y1, x2, y2 = self.box
        points = (self.landmarks + 0.5) * np.array([sx, sy]) - 0.5
        return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), points, self.score)


class FaceDetector:
    """MTCNN with its pinned weights. `detect` is thread-safe (the networks hold no state).

    runtime: "auto" (``RUNTIME``), "openvino" or "pytorch"; OpenVINO falls back to PyTorch with a log
    line where it is missing or refuses a network. P-Net is converted for any image size (the pyramid),
    R-Net and O-Net for any number of crops."""

    def __init__(self, runtime: str = "auto") -> None:
        chosen = RUNTIME if check_runtime(runtime) == "auto" else runtime
        # P-Net checked on a second size too, both sides of another parity: it meets every size.
        self.pnet = CpuNetwork(PNet(load_arrays("pnet")), _check_input(1, 36), "MTCNN P-Net", chosen,
                               also=(_check_input(1, 31, 45),))
        self.rnet = CpuNetwork(RNet(load_arrays("rnet")), _check_input(7, 24), "MTCNN R-Net", chosen,
                               shape=(-1, 3, 24, 24))
        self.onet = CpuNetwork(ONet(load_arrays("onet")), _check_input(7, 48), "MTCNN O-Net", chosen,
                               shape=(-1, 3, 48, 48))
        self.runtimes = tuple(net.prepare() for net in (self.pnet, self.rnet, self.onet))

    @torch.inference_mode()
    def detect(self, rgb: Tensor, min_face: int = MIN_FACE) -> list[Face]:
        """Faces in a 3×H×W float image in [0, 1], largest first."""
        height, width = rgb.shape[-2:]
        if min(height, width) < 12:
            return []
        image = ((rgb.float().clamp(0, 1) * 255 - 127.5) / 128).unsqueeze(0)
        boxes = self._propose(image, min_face)
        boxes = self._refine(image, boxes)
        return self._finish(image, boxes)

    def _propose(self, image: Tensor, min_face: int) -> np.ndarray:
        """P-Net over the pyramid: square windows (x1, y1, x2, y2, score) in image pixels."""
        height, width = image.shape[-2:]
        found = []
        scale = 12 / max(min_face, 12)
        while min(height, width) * scale >= 12:
            h, w = math.ceil(height * scale), math.ceil(width * scale)
            scaled = F.interpolate(image, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            offsets, probability = self.pnet(scaled)
            ys, xs = torch.nonzero(probability[0] > THRESHOLDS[0], as_tuple=True)
            if len(ys):
                # Each output cell sees a 12² window at twice its index in the scaled image.
                x1, y1 = xs * 2 / (w / width), ys * 2 / (h / height)
                side = 12 / scale
                windows = torch.stack([x1, y1, x1 + side, y1 + side], dim=1).float()
                scores = probability[0, ys, xs]
                keep = nms(windows, scores, 0.5)
                windows = _regress(windows[keep], offsets[0, :, ys[keep], xs[keep]].T)
                found.append(torch.cat([windows, scores[keep, None]], dim=1))
            scale *= PYRAMID_STEP
        if not found:
            return np.zeros((0, 5), np.float32)
        boxes = torch.cat(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)][:MAX_PROPOSALS]
        return _square(boxes.numpy())

    def _refine(self, image: Tensor, boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return boxes
        offsets, probability = self.rnet(_crops(image, boxes, 24))
        keep = probability > THRESHOLDS[1]
        windows = torch.from_numpy(boxes[:, :4])[keep]
        scores = probability[keep]
        chosen = nms(windows, scores, 0.7)
        windows = _regress(windows[chosen], offsets[keep][chosen])
        return _square(torch.cat([windows, scores[chosen, None]], dim=1).numpy())

    def _finish(self, image: Tensor, boxes: np.ndarray) -> list[Face]:
        if not len(boxes):
            return []
        offsets, points, probability = self.onet(_crops(image, boxes, 48))
        keep = (probability > THRESHOLDS[2]).numpy()
        windows = torch.from_numpy(boxes[keep, :4])
        sides = (windows[:, 2:] - windows[:, :2])
        # Landmarks are fractions of the 48² crop, whose pixel centres lie half a pixel in.
        xs = windows[:, :1] + points[keep][:, :5] * sides[:, :1] - 0.5
        ys = windows[:, 1:2] + points[keep][:, 5:] * sides[:, 1:] - 0.5
        landmarks = torch.stack([xs, ys], dim=2).double().numpy()
        final = _regress(windows, offsets[keep]).numpy()
        scores = probability[keep].numpy()
        faces = [
            Face(tuple(float(v) for v in final[i]), landmarks[i], float(scores[i]))
            for i in _nms_min(final, scores, 0.7)
        ]
        return sorted(faces, key=lambda f: -f.size)


def _check_input(batch: int, height: int, width: int | None = None) -> Tensor:
    """A deterministic batch in the networks' input range ([−1, 1]) to check a conversion on."""
    shape = (batch, 3, height, width or height)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _regress(windows: Tensor, offsets: Tensor) -> Tensor:
    """Move each window's edges by the network's offsets (fractions of its side)."""
    sides = (windows[:, 2:] - windows[:, :2]).repeat(1, 2)
    return windows + offsets.float() * sides


def _square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square about its centre (the next network's crops are square)."""
    boxes = boxes.copy()
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    boxes[:, :2] = centres - sides[:, None] / 2
    boxes[:, 2:4] = centres + sides[:, None] / 2
    return boxes


def _crops(image: Tensor, boxes: np.ndarray, size: int) -> Tensor:
    """Each box resampled to size² (bilinear at bin centres; zero outside the image)."""
    rois = torch.zeros((len(boxes), 5))
    rois[:, 1:] = torch.from_numpy(boxes[:, :4])
    return roi_align(image, rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy suppression by intersection over the smaller box: a box inside a face is dropped."""
    order = list(np.argsort(-scores))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        rest = np.array(order, dtype=int)
        if not len(rest):
            break
        low = np.maximum(boxes[best, :2], boxes[rest, :2])
        high = np.minimum(boxes[best, 2:4], boxes[rest, 2:4])
        shared = np.prod(np.clip(high - low, 0, None), axis=1)
        overlap = shared / np.maximum(np.minimum(areas[best], areas[rest]), 1e-6)
        order = [int(i) for i, o in zip(rest, overlap, strict=True) if o <= threshold]
    return kept


_shared: FaceDetector | None = None
_shared_lock = threading.Lock()


def shared_detector() -> FaceDetector:
    """One detector per process, built on first use (the weights are read and checked once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FaceDetector()
        return _shared
