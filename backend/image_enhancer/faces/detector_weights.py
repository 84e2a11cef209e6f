"""The face detector's weights: MTCNN's three networks as shipped in the `mtcnn` wheel (MIT licence).

The wheel stores them as lz4-compressed joblib pickles of Keras weight lists. Each file's sha256 is
pinned here, and the unpickler builds nothing but plain numpy arrays: a pickle can otherwise run code.
The package itself is never imported (its `__init__` needs TensorFlow); only its files are read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import io
import pickle
from pathlib import Path

import lz4.frame
import numpy as np
from joblib.numpy_pickle import NumpyUnpickler

DISTRIBUTION = "mtcnn"
#: sha256 of the files in mtcnn 1.0.0 (the networks of Zhang et al. 2016, converted to Keras).
PINNED = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}
# The only globals the files name: joblib's array wrapper and what it needs to describe an array.
_ALLOWED = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class DetectorWeightsError(RuntimeError):
    """The face detector's weights are missing or not the pinned files."""


# joblib 1.5 added a required byte-order argument; earlier versions do not take it.
_UNPICKLER_OPTIONS = (
    {"ensure_native_byte_order": True}
    if "ensure_native_byte_order" in inspect.signature(NumpyUnpickler.__init__).parameters
    else {}
)


class _ArraysOnly(NumpyUnpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def weights_path(net: str) -> Path:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DetectorWeightsError(
            "the face detector is not installed: install the 'mtcnn' package (it ships the weights)"
        ) from None
    return Path(str(dist.locate_file(f"mtcnn/assets/weights/{net}.lz4")))


def load_arrays(net: str) -> list[np.ndarray]:
    """The Keras weight list of `net` ("pnet", "rnet" or "onet"), checked against its pinned hash."""
    path = weights_path(net)
    try:
        packed = path.read_bytes()
    except OSError as exc:
        raise DetectorWeightsError(f"face detector weights {path.name} cannot be read: {exc}") from None
    if hashlib.sha256(packed).hexdigest() != PINNED[net]:
        raise DetectorWeightsError(
            f"face detector weights {path.name} are not the pinned file (another mtcnn version?)"
        )
    raw = lz4.frame.decompress(packed)
    handle = io.BytesIO(raw)
    arrays = _ArraysOnly(str(path), handle, **_UNPICKLER_OPTIONS).load()
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise DetectorWeightsError(f"face detector weights {path.name} hold no list of arrays")
    return arrays
