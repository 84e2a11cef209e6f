"""Every JSON file we read is bounded in size and nesting: too big, too deep, not JSON, or not a regular
file is one clear error naming the file, never a RecursionError, a hang or gigabytes read.

Covers the reader itself and the files read through it: the weights manifest, the plug-in's settings
file, the server's speed record, a training config (pair files: tests/test_model_folder_isolation.py;
the plug-in's vendored copy of the reader: tests/test_gimp_install.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
from pathlib import Path

import pytest

from image_enhancer.server.model_speed import ModelSpeeds
from image_enhancer.weights.manifest import ManifestError, load_manifest

PLUGIN = Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"
DEEP = "[" * 100_000 + "]" * 100_000  # Python's json module raises RecursionError on this


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # no disk used; a reader that reads it all would pay for every byte
    return path


def test_deep_nesting_is_refused_before_parsing(tmp_path):
    from image_enhancer.safe_json import JsonFileError, load_json

    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(JsonFileError, match="deep.json: nested 100000 levels deep; at most 32 are read"):
        load_json(path, max_bytes=1 << 20)
    # Brackets inside strings nest nothing.
    path.write_text(json.dumps({"a": ["[[[[", {"b": '\\"{{{{'}]}))
    assert load_json(path, max_bytes=1 << 20, max_depth=3) == {"a": ["[[[[", {"b": '\\"{{{{'}]}
    with pytest.raises(JsonFileError, match="nested 3 levels deep; at most 2"):
        load_json(path, max_bytes=1 << 20, max_depth=2)


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    from image_enhancer.safe_json import JsonFileError, load_json

    path = _sparse(tmp_path / "huge.json", 1 << 30)
    with pytest.raises(JsonFileError, match=r"huge.json: 1073741824 bytes; at most 1024 are read"):
        load_json(path, max_bytes=1024)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe{}", "not UTF-8"), (b"1" * 5000, "not valid JSON")],
    ids=["syntax", "encoding", "huge-integer"],
)
def test_bad_content_names_the_file(tmp_path, content, message):
    from image_enhancer.safe_json import JsonFileError, load_json

    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError, match=f"bad.json: {message}"):
        load_json(path, max_bytes=1 << 20)


def test_a_fifo_or_folder_is_refused_without_blocking(tmp_path):
    from image_enhancer.safe_json import JsonFileError, load_json

    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "folder.json").mkdir()
    errors: list[str] = []

    def read_all() -> None:
        for name in ("fifo.json", "folder.json", "missing.json"):
            try:
                load_json(tmp_path / name, max_bytes=1024)
            except JsonFileError as error:
                errors.append(str(error))

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert "fifo.json: not a regular file" in errors[0]
    assert "folder.json: not a regular file" in errors[1]
    assert "missing.json: cannot be read" in errors[2]


@pytest.mark.parametrize("content", [DEEP, None], ids=["deep", "1GB"])
def test_the_manifest_is_bounded(tmp_path, content):
    path = tmp_path / "manifest.json"
    if content is None:
        _sparse(path, 1 << 30)
    else:
        path.write_text(content)
    with pytest.raises(ManifestError, match="cannot read the weights manifest .*(nested|bytes)"):
        load_manifest(path)


def test_a_manifest_of_the_wrong_shape_is_a_manifest_error(tmp_path):
    path = tmp_path / "manifest.json"
    for content in ("[]", '{"models": 3}', '{"models": [1]}'):
        path.write_text(content)
        with pytest.raises(ManifestError, match="list of models"):
            load_manifest(path)


@pytest.mark.parametrize("content", [DEEP, None], ids=["deep", "1GB"])
def test_a_damaged_speed_record_is_ignored(tmp_path, content, caplog):
    record = tmp_path / "network_throughput.json"
    if content is None:
        _sparse(record, 1 << 30)
    else:
        record.write_text(content)
    with caplog.at_level(logging.WARNING):
        speeds = ModelSpeeds("CPU A", record)
    assert speeds.speed("m") == (0.0, 0.0)
    assert "ignoring unreadable speed record" in caplog.text
    assert "nested 100000 levels deep" in caplog.text if content else "1073741824 bytes" in caplog.text


def _transport():  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location("ai_enhance_transport_limits", PLUGIN / "transport.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("content", [DEEP, None], ids=["deep", "1GB"])
def test_the_plugin_settings_file_is_bounded(tmp_path, content):
    transport = _transport()
    path = tmp_path / transport.CONFIG_NAME
    if content is None:
        _sparse(path, 1 << 30)
    else:
        path.write_text(content)
    with pytest.raises(transport.BackendError, match="settings file .* is damaged .*(nested|bytes)"):
        transport.load_config(tmp_path)


def test_a_deep_training_config_is_a_config_error(tmp_path):
    from image_enhancer_training.config import ConfigError, load_config

    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(ConfigError, match="nested 100000 levels deep"):
        load_config(path)
