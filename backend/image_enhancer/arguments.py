"""Command-line arguments shared by several commands, and value types that refuse bad numbers when
the arguments are parsed.

Each returns an argparse type function; a bad value ends the command with argparse's usage message and
the reason (e.g. "--max-input-megapixels: must be a finite number, got 'nan'"), before anything loads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from image_enhancer.engine.choices import PRECISIONS, RUNTIMES


def add_renamed(parser: argparse.ArgumentParser, name: str, old_name: str, **settings: object) -> None:
    """An option under its new `name` that still accepts the `old_name` it had (said so in its help)."""
    settings["help"] = f"{settings.get('help', '')} (also accepted as {old_name}, its former name)".strip()
    parser.add_argument(name, old_name, **settings)  # type: ignore[arg-type]


def _number(text: str, kind: type[float] | type[int]) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def float_in(low: float, high: float) -> Callable[[str], float]:
    """A finite float in [low, high]."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text!r}")
        return float(value)

    return parse


def positive_float(text: str) -> float:
    """A finite float above 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return float(value)


def int_in(low: int, high: int, *, also: tuple[int, ...] = ()) -> Callable[[str], int]:
    """An integer in [low, high], or one of the special values in `also` (such as 0 = automatic)."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value not in also and not low <= value <= high:
            special = "".join(f"{v} or " for v in also)
            raise argparse.ArgumentTypeError(f"must be {special}between {low} and {high}, got {text!r}")
        return value

    return parse


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --runtime and --precision, shared by `enhance` and `serve`."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the fastest found: a PyTorch GPU, else a Vulkan GPU, else the CPU), cpu, cuda[:N], "
        "xpu[:N], mps or vulkan[:N]; see `image-enhancer devices`",
    )
    parser.add_argument(
        "--runtime", default="auto", choices=RUNTIMES, help="what runs the network"
    )
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
