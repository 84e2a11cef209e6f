"""The OpenVINO runtime: conversion once per graph, weights swapped in for every other model of that
graph (strengths, community files), and results equal to PyTorch fp32."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact
from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

from image_enhancer import architectures
from image_enhancer.architectures import rrdbnet
from image_enhancer.architectures.base import Part, Sum
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.runtimes.cpu import native_bf16
from image_enhancer.runtimes.memory import MEMORY_LIMIT_ENV, resident_bytes
from image_enhancer.runtimes.openvino import cpu_precision
from image_enhancer.runtimes.openvino import export as openvino_export
from image_enhancer.runtimes.openvino.runner import OpenVinoRunner

pytest.importorskip("openvino")

LEVEL = 1 / 255


def loaded(module: torch.nn.Module, architecture: str, scale: int) -> LoadedModel:
    descriptor = ModelDescriptor(architecture=architecture, scale=scale, in_channels=3, out_channels=3)
    return LoadedModel(module.eval(), descriptor)


def tiny_rrdb(seed: int, blocks: int = 2) -> LoadedModel:
    torch.manual_seed(seed)
    return loaded(RRDBNet(in_nc=3, out_nc=3, num_filters=16, num_blocks=blocks, scale=4), "RRDBNet", 4)


def tiny_compact(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    return loaded(
        SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4), "SRVGGNetCompact", 4
    )


def stages_of(model: LoadedModel) -> list[Part]:
    return architectures.stages(model.module, model.descriptor.architecture)


def run_both(model: LoadedModel, cache: Path, side: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.rand(2, 3, side, side + 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.module(batch)
    return OpenVinoRunner(model, cache)(batch), expected


@pytest.mark.parametrize("make", [tiny_rrdb, tiny_compact])
def test_converted_network_equals_pytorch_and_is_cached_once_per_graph(make, tmp_path):
    got, expected = run_both(make(0), tmp_path)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    graphs = sorted(tmp_path.glob("*.xml"))
    assert len(graphs) == len(stages_of(make(0)))  # one per stage

    # Another model of the same graph (a community file, another strength): its weights are swapped
    # into the cached graph, nothing is converted again, and it computes with its own weights.
    stamps = [graph.stat().st_mtime_ns for graph in graphs]
    other = make(1)
    got, expected = run_both(other, tmp_path)
    assert (got - expected).abs().max() < 1e-4
    assert sorted(tmp_path.glob("*.xml")) == graphs
    assert [graph.stat().st_mtime_ns for graph in graphs] == stamps


def test_a_network_run_whole_gives_its_result_channels_last(tmp_path):
    """As OpenVINO computes its last layers and as a picture interleaves its samples: no reorder there
    and no transposing copy when the picture is made. A network run in stages keeps its layout."""
    batch = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    for model, channels_last in ((tiny_compact(0), True), (tiny_rrdb(0), False)):
        got = OpenVinoRunner(model, tmp_path)(batch)
        with torch.inference_mode():
            expected = model.module(batch)
        assert got.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert (got - expected).abs().max() < 1e-4


def test_weights_the_converter_folded_into_a_scaling_are_found_with_their_factor(tmp_path):
    """RRDBNet scales each dense block's last conv by 0.2; the converter folds that into the weights,
    so the map records the factor and a swap writes 0.2 × the new weights."""
    model = tiny_rrdb(0)
    openvino_export.networks(model, tmp_path)
    maps = [json.loads(record.read_text())["weights"] for record in tmp_path.glob("*.json")]
    assert len(maps) == 2  # the body, and the tail that runs in strips
    body, tail = (stage.module.state_dict() for stage in stages_of(model))
    assert sorted({key for mapping in maps for key, _ in mapping.values()}) == sorted({*body, *tail})
    factors = {key: factor for mapping in maps for key, factor in mapping.values()}
    assert factors["layers.1.sub.0.RDB1.conv5.0.weight"] == pytest.approx(0.2, rel=1e-5)
    assert factors["layers.0.weight"] == 1.0


@pytest.mark.parametrize(("scale", "shuffle"), [(4, None), (2, None), (4, 2), (4, 4)])
def test_rrdbnet_in_stages_equals_the_whole_network(scale, shuffle, tmp_path):
    """Body, then the ×4 tail in strips of a few rows (less than the tile): the whole network's result."""
    torch.manual_seed(0)
    channels = 3 * (shuffle or 1) ** 2  # as spandrel builds Real-ESRGAN x2plus: unshuffled input
    network = RRDBNet(in_nc=channels, num_filters=8, num_blocks=1, scale=scale, shuffle_factor=shuffle)
    model = loaded(network, "RRDBNet", scale // (shuffle or 1))
    model.descriptor = dataclasses.replace(model.descriptor, size_multiple=shuffle or 1)
    batch = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.module(batch)
        chained = batch
        stages = stages_of(model)
        for stage in stages:
            chained = stage.module(chained)
    assert [stage.halo for stage in stages] == [0, rrdbnet.TAIL_HALO]
    assert torch.equal(chained, expected)
    runner = OpenVinoRunner(model, tmp_path, strip_pixels=3 * 28 // (shuffle or 1))  # 3 body rows
    assert (runner(batch) - expected).abs().max() < 1e-4


def test_rrdbnet_for_a_reduced_precision_is_the_same_network_with_its_sums_outside():
    """The first conv in fp32, each block's residual and the trunk's shortcut as sums, the tail in
    strips: run in PyTorch, exactly the whole network."""
    model = tiny_rrdb(0)
    chain = rrdbnet.ARCHITECTURE.reduced_precision_split(model.module)
    head, trunk, tail = chain
    assert head.fp32 and not tail.fp32 and tail.halo == rrdbnet.TAIL_HALO
    assert [type(item) for item in trunk.parts] == [Sum, Sum, Part]  # two blocks, then conv_body
    batch = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        chained = openvino_export._walk(chain, batch, [])  # the walk that gives each part its check input
        assert (chained - model.module(batch)).abs().max() < 1e-6


def test_a_reduced_precision_runs_the_blocks_through_one_network_taking_their_weights(tmp_path):
    """RRDBNet in bf16 on OpenVINO: its blocks share one converted and compiled network that takes each
    block's weights as inputs; the result is the network's (bf16-close where the CPU computes bf16,
    fp32-exact where OpenVINO falls back to fp32)."""
    model = tiny_rrdb(0)
    batch = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    runner = OpenVinoRunner(model, tmp_path, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = model.module(batch)
    tolerance = 0.02 if native_bf16() else 1e-4
    assert (runner(batch) - expected).abs().max() < tolerance * max(1.0, float(expected.abs().max()))
    # Two stages for fp32, four parts for bf16 (first conv, one block for both, conv_body, tail).
    assert len(list(tmp_path.glob("*.xml"))) == 2 + 4


def test_a_reduced_precision_keeps_a_sixth_of_the_blocks_at_each_end_in_fp32(tmp_path):
    """12 blocks: the first two and the last two in fp32, the rest in bf16; one converted graph for all
    twelve, compiled once per precision (its fp32 and bf16 compilations never replace each other)."""
    model = tiny_rrdb(0, blocks=12)
    _head, trunk, _tail = rrdbnet.ARCHITECTURE.reduced_precision_split(model.module)
    blocks = [item.parts[0] for item in trunk.parts[:-1]]
    assert [block.fp32 for block in blocks] == [True] * 2 + [False] * 8 + [True] * 2
    runner = OpenVinoRunner(model, tmp_path, dtype=torch.bfloat16)
    batch = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.module(batch)
    tolerance = 0.02 if native_bf16() else 1e-4
    requests = []
    for _ in range(2):
        assert (runner(batch) - expected).abs().max() < tolerance * max(1.0, float(expected.abs().max()))
        requests.append({key: request for key, (_shape, request) in runner._compiled.items()})
    assert len(list(tmp_path.glob("*.xml"))) == 2 + 4  # the plain two stages; head, block, body, tail
    (fp32_blocks,) = [key for key in requests[0] if key.endswith("-fp32")]
    assert fp32_blocks.removesuffix("-fp32") in requests[0]  # the same graph, compiled in each precision
    assert all(requests[1][key] is request for key, request in requests[0].items())  # once each


class Squared(torch.nn.Module):
    """A ×1 network using a weight only through its square, which the converter computes ahead."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(
            torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight * self.weight, padding=1)


def test_a_graph_whose_weights_cannot_be_swapped_is_converted_per_weights(tmp_path):
    first, second = loaded(Squared(0), "test", 1), loaded(Squared(1), "test", 1)
    for model in (first, second):
        got, expected = run_both(model, tmp_path)
        assert (got - expected).abs().max() < 1e-4  # never the other model's weights
    (record,) = tmp_path.glob("*.json")
    assert json.loads(record.read_text())["weights"] is None
    assert len(list(tmp_path.glob("*.xml"))) == 2  # each model's own conversion


def test_a_strength_change_reuses_the_converted_graph_within_seconds(model_store, tmp_path):
    """Moving the strength slider on the OpenVINO runtime: blend, swap, compile — no conversion."""
    crop = np.asarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3)), dtype=np.uint8)
    engine = Enhancer(model_store, device="cpu", runtime="openvino", runtime_cache=tmp_path)
    reference = Enhancer(model_store, device="cpu", runtime="pytorch")
    engine.enhance(crop, EnhanceOptions(model="ie-compact-x4-gan", strength=0.0))
    started = time.perf_counter()
    ours = engine.enhance(crop, EnhanceOptions(model="ie-compact-x4-gan", strength=0.6))
    assert time.perf_counter() - started < 3.0
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 1
    expected = reference.enhance(crop, EnhanceOptions(model="ie-compact-x4-gan", strength=0.6))
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_reduced_precision_is_only_used_when_asked_for_and_tolerated():
    def model(half: bool, bf16: bool) -> ModelDescriptor:
        return ModelDescriptor("test", 4, 3, 3, supports_half=half, supports_bf16=bf16)

    assert cpu_precision("auto", model(True, True)) is torch.float32
    assert cpu_precision("fp32", model(True, True)) is torch.float32
    assert cpu_precision("bf16", model(True, True)) is torch.bfloat16
    assert cpu_precision("fp16", model(True, True)) is torch.float16
    assert cpu_precision("fp16", model(False, True)) is torch.bfloat16
    assert cpu_precision("bf16", model(True, False)) is torch.float32


def test_bf16_when_asked_stays_close_to_fp32(tmp_path):
    model = tiny_compact(0)
    batch = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.module(batch)
    got = OpenVinoRunner(model, tmp_path, torch.bfloat16)(batch)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() < 8 * LEVEL


def test_a_graph_openvino_cannot_run_goes_to_pytorch(tmp_path):
    """A graph recorded as unconvertible is not tried again, and the engine runs it on PyTorch."""
    model = tiny_compact(0)
    graph = openvino_export.graph_digest(model.module, "SRVGGNetCompact", {})
    cache = tmp_path / "openvino"  # the runtime's folder in the engine's runtime cache
    cache.mkdir()
    (cache / f"{graph}.json").write_text(json.dumps({"unsupported": "converter failed here"}))
    with pytest.raises(openvino_export.UnsupportedGraphError, match="converter failed here"):
        openvino_export.networks(model, cache)

    class OneModel:
        def get(self, name: str, strength: float | None = None) -> LoadedModel:
            return model

    image = np.asarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3)), dtype=np.uint8)
    engine = Enhancer(OneModel(), device="cpu", runtime="openvino", runtime_cache=tmp_path)
    reference = Enhancer(OneModel(), device="cpu", runtime="pytorch")
    np.testing.assert_array_equal(
        engine.enhance(image, EnhanceOptions(model="tiny")),
        reference.enhance(image, EnhanceOptions(model="tiny")),
    )


def test_a_job_is_planned_as_the_one_before_it_that_left_its_network_compiled(
    model_store, tmp_path, monkeypatch
):
    """OpenVINO keeps a compiled network's working memory between jobs. The next job reuses it (or
    frees it before compiling another shape), so a job planned as one window under a tight memory limit
    is planned as one window again after it ran, not as several (each compiled anew)."""
    side = 512
    image = np.asarray(np.random.default_rng(2).integers(0, 256, (side, side, 3)), dtype=np.uint8)
    options = EnhanceOptions(model="ie-compact-x4-psnr")
    engine = Enhancer(model_store, device="cpu", runtime="openvino", precision="fp32", runtime_cache=tmp_path)
    engine.enhance(image[:16, :16], options)  # loaded and converted, as the server's warm-up does

    def one_window(limit: int) -> bool:
        monkeypatch.setenv(MEMORY_LIMIT_ENV, str(limit))
        return engine.tile_settings(side, side, options).tile >= side

    low, high = resident_bytes(), resident_bytes() + (4 << 30)  # the least limit for one window, to 4 MB
    assert one_window(high)
    while high - low > 4 << 20:
        middle = (low + high) // 2
        low, high = (low, middle) if one_window(middle) else (middle, high)
    limit = high + (40 << 20)
    assert one_window(limit)
    engine.enhance(image, options)
    assert one_window(limit)
