"""A 4096x4096 RGBA result (64 MiB) through both clients, byte for byte equal to the in-process engine's.

The model runs on a 512x512 input (x4) and the engine resamples to x8, so the bytes moved are those of
the 4096x4096 case while the CPU cost stays a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_MODEL

from image_enhancer.engine.enhancer import EnhanceOptions

SIDE = 512
OPTIONS = dict(model=FAST_MODEL, scale=8.0, alpha_mode="bicubic")

LITE_PROBE = r"""
import hashlib, sys
from image_enhancer.client.lite import LiteClient
address, side, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = sys.stdin.buffer.read()
with LiteClient(address) as client:
    info, result = client.enhance(data, side, side, 4, "u8", model=model, scale=8.0, alpha_mode="bicubic",
                                  timeout=600)
print(info.width, info.height, info.channels, len(result), hashlib.sha256(result).hexdigest())
"""


@pytest.fixture(scope="module")
def large_case(make_enhancer):
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    expected = make_enhancer().enhance(pixels, EnhanceOptions(**OPTIONS))
    assert expected.shape == (4096, 4096, 4)
    return pixels, hashlib.sha256(expected.tobytes()).hexdigest()


@pytest.mark.slow
def test_4096_rgba_result_through_the_grpcio_client(grpc_client, large_case):
    pixels, expected_hash = large_case
    info, data = grpc_client.enhance(pixels.tobytes(), SIDE, SIDE, 4, "u8", timeout=600, **OPTIONS)
    assert (info.width, info.height, info.channels, len(data)) == (4096, 4096, 4, 4096 * 4096 * 4)
    assert hashlib.sha256(data).hexdigest() == expected_hash


@pytest.mark.slow
def test_4096_rgba_result_through_the_pure_python_client(grpc_server, large_case):
    pixels, expected_hash = large_case
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "MULTIDICT_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LITE_PROBE, grpc_server.address, str(SIDE), FAST_MODEL],
        input=pixels.tobytes(),
        env=env,
        capture_output=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["4096", "4096", "4", str(4096 * 4096 * 4), expected_hash]
