"""The `image-enhancer` command: enhance files, list models, serve gRPC, train models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from image_enhancer import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-enhancer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"image-enhancer {__version__}")
    commands = parser.add_subparsers(title="commands")

    enhance = commands.add_parser("enhance", help="enhance image files or folders")
    _add_enhance_arguments(enhance)
    enhance.set_defaults(run=_run_enhance)

    models = commands.add_parser("models", help="list models and whether each is installed")
    models.set_defaults(run=_run_models)

    devices = commands.add_parser("devices", help="list the GPUs and CPU runtimes found, and what auto picks")
    devices.set_defaults(run=_run_devices)

    serve = commands.add_parser("serve", help="run the gRPC backend")
    from image_enhancer.server.main import add_serve_arguments, run_serve

    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)

    train = commands.add_parser("train", help="train a model from a config file")
    train.add_argument("config", help="training config file (see training/configs/)")
    train.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    train.set_defaults(run=_run_train)
    return parser


def _add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    parser.add_argument("-m", "--model", default=None, help="model name (see `image-enhancer models`)")
    parser.add_argument("-s", "--scale", type=float, default=None, help="output scale, e.g. 1, 1.5, 2, 4")
    parser.add_argument(
        "--strength", type=float, default=None, help="0 = faithful (PSNR) … 1 = sharp (GAN); paired models"
    )
    parser.add_argument("--tile", type=int, default=0, help="tile size in input pixels (0 = automatic)")
    add_device_arguments(parser)
    parser.add_argument("--alpha-mode", default="model", choices=["model", "bicubic"])
    parser.add_argument(
        "--colour-fidelity", action="store_true", help="keep the input's low-frequency colour"
    )
    parser.add_argument(
        "--auto-contrast", type=float, default=0.0, help="automatic contrast/colour strength 0…1"
    )
    parser.add_argument("--format", default=None, help="output suffix, e.g. png or tif (default: input's)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--compare", action="store_true", help="also write a before/after picture")
    parser.add_argument(
        "--max-megapixels", type=float, default=None, help="refuse outputs larger than this"
    )
    parser.add_argument(
        "--server", default=None, help="send work to a running server (host:port or unix:PATH)"
    )
    parser.add_argument("--token", default=None, help="access token for a remote server")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --runtime and --precision, shared by `enhance` and `serve`."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the fastest found: a PyTorch GPU, else a Vulkan GPU, else the CPU), cpu, cuda[:N], "
        "xpu[:N], mps or vulkan[:N]; see `image-enhancer devices`",
    )
    parser.add_argument(
        "--runtime", default="auto", choices=["auto", "pytorch", "ncnn"], help="what runs the network"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def _run_enhance(args: argparse.Namespace) -> int:
    from image_enhancer.batch import run_batch

    return run_batch(args)


def _run_models(args: argparse.Namespace) -> int:
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    rows = [("name", "arch", "scale", "installed", "strength", "licence")]
    for info in store.list():
        name = info.name + (" (default)" if info.is_default else "")
        rows.append(
            (
                name,
                info.architecture,
                f"x{info.scale}",
                "yes" if info.installed else "no",
                "yes" if info.has_strength else "-",
                info.license,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if any(not info.installed for info in store.list()):
        print("\nInstall missing models with: python install.py --models NAME")
    return 0


def _run_devices(args: argparse.Namespace) -> int:
    from image_enhancer.engine.devices import choose_device, discover

    for device in discover():
        note = "  (software rasteriser: never picked by auto)" if device.software else ""
        print(f"{device.key:<10} {device.runtime:<8} {device.name}{note}")
    print(f"\nauto picks: {choose_device('auto').describe()}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from image_enhancer_training.run import train_main

    return train_main([args.config] + (["--no-resume"] if args.no_resume else []))


if __name__ == "__main__":
    sys.exit(main())
