"""Network detection from state dicts (architectures come from spandrel)."""

from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.models.registry import UnsupportedModelError, describe, load_model

__all__ = ["LoadedModel", "ModelDescriptor", "UnsupportedModelError", "describe", "load_model"]
