"""Line charts drawn with Pillow (no plotting library needed): loss/metric curves and strength sweeps."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
Series = tuple[str, Sequence[float], Sequence[float]]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def draw_panel(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, series: list[Series], xlabel: str
) -> None:
    """One chart inside `box` (left, top, right, bottom): axes, 5 ticks per axis, a legend."""
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left + 4, top - 14), title, fill=(0, 0, 0))
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if not points:
        draw.text((left + 10, top + 10), "no data yet", fill=(120, 120, 120))
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for i in range(5):
        fx = x0 + (x1 - x0) * i / 4
        fy = y0 + (y1 - y0) * i / 4
        px, _ = to_px(fx, y0)
        _, py = to_px(x0, fy)
        draw.line((px, bottom, px, bottom + 3), fill=(0, 0, 0))
        draw.text((px - 10, bottom + 5), _fmt(fx), fill=(0, 0, 0))
        draw.line((left - 3, py, left, py), fill=(0, 0, 0))
        draw.text((left - 48, py - 5), _fmt(fy), fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 20, bottom + 18), xlabel, fill=(0, 0, 0))
    for k, (label, xs, ys) in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = [to_px(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts if len(pts) < 30 else []:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((right - 150, top + 6 + 12 * k), label, fill=colour)


def save_chart(path: Path, panels: list[tuple[str, list[Series]]], xlabel: str, width: int = 900) -> Path:
    """Stack panels vertically into one PNG."""
    panel_h = 230
    image = Image.new("RGB", (width, 30 + len(panels) * (panel_h + 50)), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, series) in enumerate(panels):
        top = 30 + i * (panel_h + 50)
        draw_panel(draw, (70, top, width - 20, top + panel_h), title, series, xlabel)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_log(log_path: Path, out_path: Path) -> Path:
    """Training losses (smoothed) and validation PSNR/SSIM from the run's JSONL log."""
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses: dict[str, tuple[list[float], list[float]]] = {}
    val: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        step = float(rec["step"])
        target = val if rec.get("kind") == "validation" else losses
        for key, value in rec.items():
            if key in ("step", "kind", "stage", "iteration", "lr") or not isinstance(value, int | float):
                continue
            xs, ys = target.setdefault(key, ([], []))
            xs.append(step)
            ys.append(float(value))
    loss_series = [(k, xs, _smooth(ys, 20)) for k, (xs, ys) in losses.items()]
    psnr_series = [(k, xs, ys) for k, (xs, ys) in val.items() if k.endswith("psnr")]
    ssim_series = [(k, xs, ys) for k, (xs, ys) in val.items() if k.endswith("ssim")]
    panels = [
        ("training losses (moving average of 20 logs)", loss_series),
        ("validation PSNR (Y, dB)", psnr_series),
        ("validation SSIM (Y)", ssim_series),
    ]
    return save_chart(out_path, panels, "iteration (PSNR stage, then GAN stage)")
