"""The CLI's per-file bar (batch.BAR_FORMAT): percent, time spent and time left, the stage as postfix;
no rate, which for a job of one tile read like "2642 tile/s"."""

from __future__ import annotations

from tqdm import tqdm

from image_enhancer.batch import BAR_FORMAT


def test_the_bar_shows_percent_elapsed_and_remaining_time() -> None:
    line = tqdm.format_meter(
        37, 100, 42.0, ncols=100, prefix="photo.png", bar_format=BAR_FORMAT, postfix="enhancing"
    )
    assert line.startswith("photo.png:  37%|")
    assert line.endswith("| 00:42 elapsed, 01:11 left, enhancing")  # 42 s for 37 %: 71.5 s to go
    assert "/s" not in line


def test_before_the_work_starts_the_time_left_is_unknown() -> None:
    line = tqdm.format_meter(
        0, 1, 2.0, ncols=100, prefix="photo.png", bar_format=BAR_FORMAT, postfix="loading model"
    )
    assert line.endswith("| 00:02 elapsed, ? left, loading model")
    assert "  0%|" in line
