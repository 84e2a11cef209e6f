"""Regenerate the committed Python code in backend/image_enhancer/v1/ from the .proto files.

Run `python protos/generate.py` after editing a .proto; tests/test_protos_drift.py fails until the
committed code matches. Needs grpcio-tools (the `dev` extra), whose bundled protoc pins the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "backend"
PROTO_FILES = ("image_enhancer/v1/enhancer.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(out_dir: Path) -> list[Path]:
    """The files protoc writes for PROTO_FILES under `out_dir`."""
    files = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        files += [out_dir / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES]
    return files


def generate(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Run protoc (message, type stub and grpcio service code) into `out_dir`; return the files."""
    from grpc_tools import protoc  # imported here: only the generator needs grpcio-tools

    for proto in PROTO_FILES:
        (out_dir / proto).parent.mkdir(parents=True, exist_ok=True)
        status = protoc.main(
            [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(PROTO_ROOT / proto),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit status {status})")
    return generated_files(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: backend/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
