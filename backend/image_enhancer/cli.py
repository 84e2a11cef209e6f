"""The `image-enhancer` command: enhance files, list models, declare pairs, serve gRPC (or on demand),
train models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from image_enhancer import __version__, set_process_defaults
from image_enhancer.arguments import add_device_arguments, add_renamed, float_in, int_in, positive_float
from image_enhancer.request import DEFAULT_FACE_STRENGTH, MAX_SCALE, MAX_TILE, MIN_SCALE, MIN_TILE


def main(argv: Sequence[str] | None = None) -> int:
    set_process_defaults()  # before any command imports NumPy or PyTorch
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

    pair = commands.add_parser(
        "pair", help="offer two compatible models as one with a strength control (0 = faithful, 1 = sharp)"
    )
    pair.add_argument("name", help="name of the new model")
    pair.add_argument("--faithful", required=True, help="the model at strength 0 (e.g. a PSNR-trained one)")
    pair.add_argument("--sharp", required=True, help="the model at strength 1 (e.g. its GAN fine-tune)")
    pair.set_defaults(run=_run_pair)

    devices = commands.add_parser("devices", help="list the GPUs and CPU runtimes found, and what auto picks")
    devices.add_argument(
        "--benchmark", action="store_true",
        help="time every CPU runtime and precision on each model again, and print what auto chooses from",
    )  # fmt: skip
    devices.add_argument(
        "-m", "--model", action="append", default=None,
        help="a model to time (repeatable; default: the model suggested for the CPU and the default model)",
    )  # fmt: skip
    devices.set_defaults(run=_run_devices)

    serve = commands.add_parser("serve", help="run the gRPC backend")
    from image_enhancer.server.main import add_serve_arguments, run_serve

    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)

    activate = commands.add_parser(
        "activate", help="listen on the backend's address and start the backend on the first connection"
    )
    from image_enhancer.activation import add_activate_arguments, run_activate

    add_activate_arguments(activate)
    activate.set_defaults(run=run_activate)

    train = commands.add_parser("train", help="train a model from a config file")
    train.add_argument("config", help="training config file (see training/configs/)")
    train.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    train.add_argument("--teacher-cache-only", action="store_true",
                       help="only compute the missing samples of data.teacher_cache, then stop")
    train.set_defaults(run=_run_train)
    return parser


def _add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    parser.add_argument("-m", "--model", default=None, help="model name (see `image-enhancer models`)")
    parser.add_argument(
        "-s", "--scale", type=float_in(MIN_SCALE, MAX_SCALE), default=None,
        help="output scale, e.g. 1, 1.5, 2, 4",
    )
    parser.add_argument(
        "--strength", type=float_in(0.0, 1.0), default=None,
        help="0 = faithful (PSNR) … 1 = sharp (GAN); paired models",
    )
    parser.add_argument(
        "--tile", type=int_in(MIN_TILE, MAX_TILE, also=(0,)), default=0,
        help="tile size in input pixels (0 = automatic)",
    )
    add_device_arguments(parser)
    parser.add_argument("--alpha-mode", default="model", choices=["model", "bicubic"])
    parser.add_argument(
        "--colour-fidelity", action="store_true", help="keep the input's low-frequency colour"
    )
    parser.add_argument(
        "--auto-contrast", type=float_in(0.0, 1.0), default=0.0, help="automatic contrast/colour strength 0…1"
    )
    parser.add_argument(
        "--faces", action="store_true", help="restore faces after the enhancement (a face model is needed)"
    )
    parser.add_argument(
        "--face-strength", type=float_in(0.0, 1.0), default=None,
        help=f"blend of restored and original faces, 0…1 (default {DEFAULT_FACE_STRENGTH}; with --faces)",
    )
    parser.add_argument("--face-model", default=None, help="face model name (default: the first installed)")
    parser.add_argument(
        "--faces-only", action="store_true",
        help="restore faces without enhancing the image (the size stays; implies --faces, no -m needed)",
    )
    parser.add_argument("--format", default=None, help="output suffix, e.g. png or tif (default: input's)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--compare", action="store_true", help="also write a before/after picture")
    add_renamed(
        parser, "--max-output-megapixels", "--max-megapixels",
        type=positive_float, default=None, help="refuse results larger than this",
    )
    parser.add_argument(
        "--server", default=None,
        help="send work to a running server (host:port or unix:PATH), or to several, balanced round-robin "
        "(dns:///NAME:PORT, ipv4:A:PORT,B:PORT)",
    )
    parser.add_argument("--token", default=None, help="access token for a remote server")
    parser.add_argument(
        "--cluster", default=None, metavar="auto|ray://HOST:PORT",
        help="run the batch on a Ray cluster (pip install 'image-enhancer[cluster]'); auto: the local "
        "one, or a new one on this machine. Resumable: a rerun does only what is missing",
    )
    parser.add_argument(
        "--cluster-actor-cpus", type=int_in(1, 1024), default=None,
        help="CPU cores per enhancer on CPU nodes (default: a whole node's)",
    )


def _run_enhance(args: argparse.Namespace) -> int:
    if args.cluster:
        from image_enhancer.cluster.run import run_cluster

        return run_cluster(args)
    from image_enhancer.batch import run_batch

    return run_batch(args)


def _run_models(args: argparse.Namespace) -> int:
    from image_enhancer.weights.store import ModelStore
    from image_enhancer.wire import printable

    store = ModelStore()
    survey = store.survey()
    rows = [("name", "arch", "scale", "installed", "strength", "licence")]
    for info in survey.models:
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
    rows = [tuple(printable(cell) for cell in row) for row in rows]  # nothing from a file splits a row
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if survey.broken:
        print(f"\nFiles in {printable(str(store.models_dir))} that offer no model:")
        for broken in survey.broken:
            print(f"  {printable(broken.file)}: {printable(broken.reason)}")
    if any(not info.installed for info in survey.models):
        print("\nInstall missing models with: python install.py --models NAME")
    return 0


def _run_pair(args: argparse.Namespace) -> int:
    from image_enhancer.models.registry import UnsupportedModelError
    from image_enhancer.weights.store import ModelStore

    try:
        path = ModelStore().declare_pair(args.name, args.faithful, args.sharp)
    except (ValueError, LookupError, UnsupportedModelError) as exc:
        print(f"image-enhancer pair: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {args.faithful} (strength 0) … {args.sharp} (strength 1), declared in {path}")
    return 0


def _run_devices(args: argparse.Namespace) -> int:
    from image_enhancer.engine.devices import choose_device, discover

    for device in discover():
        note = "  (software rasteriser: never picked by auto)" if device.software else ""
        print(f"{device.key:<10} {device.runtime:<8} {device.name}{note}")
    chosen = choose_device("auto")
    print(f"\nauto picks: {chosen.describe()}")
    if chosen.key == "cpu":
        print("  (on the CPU, runtime and precision are timed per model on first use: see --benchmark)")
    if args.benchmark:
        return _print_runtime_table(args.model)
    return 0


def _print_runtime_table(models: list[str] | None) -> int:
    """Time the CPU runtimes for each model now, and show what ``auto`` takes from the timings."""
    from image_enhancer.engine import runtime_choice
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.engine.precision import BOUND
    from image_enhancer.runtimes.cpu import cpu_features, cpu_name
    from image_enhancer.server.model_speed import suggested_model
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    engine = Enhancer(store, device="cpu")
    names = models or list(dict.fromkeys([suggested_model(store, on_gpu=False), store.default_model]))
    print(f"\n{cpu_name()} ({cpu_features()}), {engine.threads} threads")
    for name in names:
        try:
            loaded = store.get(name)
        except (LookupError, OSError, ValueError) as exc:
            print(f"image-enhancer devices: {exc}", file=sys.stderr)
            return 2
        make = engine.candidate_factory(loaded)
        timings = engine.runtime_table.timings(loaded, make, engine.threads, again=True)
        chosen = runtime_choice.best(timings, "auto")
        fastest = min(t.seconds_per_pixel for t in timings)
        print(f"\n{name}:")
        heading = ("runtime", "precision", "µs/pixel", "speed", "mean diff", "max diff")
        print("  {:<9} {:<9} {:>9} {:>6} {:>9} {:>8}".format(*heading))
        for t in sorted(timings, key=lambda t: t.seconds_per_pixel):
            mark = "  <- auto" if t is chosen else ("  (outside the bound)" if not t.within() else "")
            print(
                f"  {t.runtime:<9} {t.precision:<9} {t.seconds_per_pixel * 1e6:>9.2f} "
                f"{fastest / t.seconds_per_pixel:>5.2f}x {t.mean_levels:>9.3f} {t.max_levels:>8.2f}{mark}"
            )
    print("\ndifferences are in 8-bit levels from PyTorch fp32 (a reduced precision: on its worst shipped "
          f"photo); auto takes the fastest within mean {BOUND.mean_levels} and {BOUND.min_psnr_db:.0f} dB")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from image_enhancer_training.run import train_main

    flags = [flag for flag, on in (("--no-resume", args.no_resume),
                                   ("--teacher-cache-only", args.teacher_cache_only)) if on]
    return train_main([args.config, *flags])


if __name__ == "__main__":
    sys.exit(main())
