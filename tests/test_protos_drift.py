"""The committed generated code in backend/image_enhancer/v1/ must match what protoc makes of the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("protos_generate", REPO_ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generator = _load_generator()
    fresh = generator.generate(tmp_path)
    committed = generator.generated_files(REPO_ROOT / "backend")
    assert [p.name for p in fresh] == [p.name for p in committed]
    stale = [
        str(c.relative_to(REPO_ROOT))
        for f, c in zip(fresh, committed, strict=True)
        if not c.exists() or f.read_bytes() != c.read_bytes()
    ]
    assert not stale, f"regenerate with `python protos/generate.py`; out of date: {stale}"


def test_generated_code_describes_the_service() -> None:
    from image_enhancer.v1 import enhancer_pb2

    service = enhancer_pb2.DESCRIPTOR.services_by_name["Enhancer"]
    assert {m.name for m in service.methods} >= {"Enhance", "ListModels", "DescribeServer"}
    assert enhancer_pb2.DESCRIPTOR.package == "image_enhancer.v1"
