"""SPAN's facts: spandrel's names and terms serve it as they are; it runs on OpenVINO (its family
test passes there)."""

from __future__ import annotations

from image_enhancer.architectures.base import Architecture

ARCHITECTURE = Architecture("SPAN", verified_on=frozenset({"openvino"}))
