"""The pure-Python client (grpclib + pure-Python protobuf) against the real server, in a subprocess
that forbids compiled extensions the way GIMP's Python on Windows does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_MODEL

from image_enhancer.client.core import EnhancerError
from image_enhancer.client.lite import LiteClient
from image_enhancer.engine.enhancer import EnhanceOptions
from image_enhancer.server.app import serve

# Runs in the child: every call of the client's API, results written to files, facts as JSON.
PROBE = r'''
import importlib.abc, importlib.machinery, json, sys
from pathlib import Path

COMPILED = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def third_party_extension(origin):
    return bool(origin) and origin.endswith(COMPILED) and ("-packages" in origin)


class RefuseCompiledWheels(importlib.abc.MetaPathFinder):
    """Like a Python that cannot load compiled wheels: their extension modules fail to import."""

    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and third_party_extension(spec.origin):
            raise ImportError(f"compiled extension {name} cannot be loaded here")
        return None


sys.meta_path.insert(0, RefuseCompiledWheels())
from image_enhancer.client import lite
from image_enhancer.client.core import EnhancerError

address, token, folder, fast, unix_address = sys.argv[1:6]
folder = Path(folder)
facts = {}

def attempt(name, call):
    try:
        call()
        facts[name] = "ok"
    except EnhancerError as error:
        facts[name] = error.kind + ": " + str(error)

with lite.LiteClient(address, token=token or None) as client:
    client.wait_until_serving(60)
    facts["health"] = client.health()
    facts["models"] = [m.name for m in client.list_models()]
    facts["default"] = client.describe().default_model
    for job in json.loads((folder / "jobs.json").read_text()):
        events = []
        info, data = client.enhance((folder / job["input"]).read_bytes(), job["width"], job["height"],
                                    job["channels"], job["sample_type"], model=fast,
                                    on_progress=lambda p: events.append(p.stage))
        (folder / (job["input"] + ".out")).write_bytes(data)
        facts[job["input"]] = [info.width, info.height, info.channels, info.sample_type, events]
    attempt("unknown model", lambda: client.enhance(b"\0" * 48, 4, 4, 3, "u8", model="no-such-model"))
    attempt("bad scale", lambda: client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=fast, scale=9))
    attempt("deadline", lambda: client.enhance(bytes(384 * 384 * 3), 384, 384, 3, "u8", model=fast, tile=16,
                                               timeout=2))
with lite.LiteClient(unix_address) as local:
    info, data = local.enhance(bytes(range(48)), 4, 4, 3, "u8", model=fast)
    facts["unix"] = [local.health(), info.width, info.height, len(data)]
with lite.LiteClient(address) as anonymous:
    attempt("no token", anonymous.list_models)
with lite.LiteClient("127.0.0.1:1") as nobody:
    attempt("no server", nobody.list_models)

from google.protobuf.internal import api_implementation
facts["protobuf"] = api_implementation.Type()
facts["compiled"] = sorted(
    name for name, module in list(sys.modules.items())
    if third_party_extension(getattr(module, "__file__", None))
)
facts["heavy"] = sorted({"grpc", "numpy", "torch", "google._upb._message"} & set(sys.modules))
print(json.dumps(facts))
'''

PURE_PYTHON_ENV = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "MULTIDICT_NO_EXTENSIONS": "1"}


def run_probe(address: str, token: str, folder: Path, unix_address: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, address, token, str(folder), FAST_MODEL, unix_address],
        env={**os.environ, **PURE_PYTHON_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def token_server(make_enhancer):
    running = serve(make_enhancer(), "127.0.0.1:0", token="lite-token", warm_up=[])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def unix_server(make_enhancer):
    with tempfile.TemporaryDirectory(prefix="ie-") as folder:  # short: socket paths are limited
        running = serve(make_enhancer(), f"unix:{folder}/lite.sock", warm_up=[])
        yield running
        running.stop()


def test_pure_python_client_against_the_real_server(token_server, unix_server, make_enhancer, tmp_path):
    rng = np.random.default_rng(5)
    images = {
        "rgba_u8": rng.integers(0, 256, (12, 20, 4), dtype=np.uint8),
        "gray_u16": rng.integers(0, 65536, (10, 9, 1), dtype=np.uint16),
        "rgb_f32": rng.random((8, 14, 3), dtype=np.float32),
    }
    jobs = []
    for name, pixels in images.items():
        (tmp_path / name).write_bytes(pixels.astype(pixels.dtype.newbyteorder("<")).tobytes())
        height, width, channels = pixels.shape
        jobs.append(
            dict(
                input=name, width=width, height=height, channels=channels, sample_type=name.rsplit("_", 1)[1]
            )
        )
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))

    facts = run_probe(token_server.address, "lite-token", tmp_path, unix_server.address)
    reference = make_enhancer()

    assert facts["protobuf"] == "python"
    assert facts["compiled"] == [], "compiled extension modules were imported"
    assert facts["heavy"] == []
    assert facts["health"] == "SERVING" and FAST_MODEL in facts["models"] and facts["default"]
    for name, pixels in images.items():
        height, width, channels = pixels.shape
        expected = reference.enhance(pixels, EnhanceOptions(model=FAST_MODEL))
        assert facts[name][:4] == [width * 4, height * 4, channels, name.rsplit("_", 1)[1]]
        assert facts[name][4][0] == "queued" and facts[name][4][-1] == "finishing"
        received = np.frombuffer((tmp_path / (name + ".out")).read_bytes(), expected.dtype.newbyteorder("<"))
        np.testing.assert_array_equal(received.reshape(expected.shape), expected)
    assert facts["unknown model"].startswith("not_found: unknown model 'no-such-model'")
    assert facts["bad scale"].startswith("invalid: scale must be between 1 and 8")
    assert facts["deadline"].startswith("deadline:")
    assert facts["unix"] == ["SERVING", 16, 16, 16 * 16 * 3]
    assert facts["no token"].startswith("unauthenticated:")
    assert facts["no server"].startswith("unavailable:")


def test_an_error_after_progress_reports_the_servers_status(damaged_model_server):
    # The job fails while loading its model, after the queued and loading messages: the client must
    # report the server's status and message, not a call that merely ended without a result.
    stages = []
    with LiteClient(damaged_model_server.address) as client:
        with pytest.raises(EnhancerError) as caught:
            client.enhance(b"\0" * 48, 4, 4, 3, "u8", model=FAST_MODEL, timeout=60,
                           on_progress=lambda p: stages.append(p.stage))
        assert client.health() == "SERVING"
    assert stages[0] == "queued"
    assert caught.value.code == "FAILED_PRECONDITION"
    assert f"python install.py --models {FAST_MODEL}" in caught.value.message
