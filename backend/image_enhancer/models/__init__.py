"""Network architectures and their detection from state dicts."""

from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.models.registry import UnsupportedModelError, load_model

__all__ = ["LoadedModel", "ModelDescriptor", "UnsupportedModelError", "load_model"]
