"""A model's network as an OpenVINO model, converted by OpenVINO's own PyTorch converter once per graph.

Converting traces the module: about 2 s for a compact model and 30 s for x4plus on two cores. So the
converted model is cached in the user cache under the sha256 of its *graph* (architecture,
hyperparameters, tensor names and shapes, OpenVINO version), not of its weights. Beside it a weight
map says which of the model's constants holds which state-dict tensor (times which factor: the
converter folds constant scalings into weights), found by content when the graph was converted (with
every weight moved a little, so no two tensors are alike) and proven by swapping in the real weights
and comparing with PyTorch. Any model with the same graph (another strength of a pair, another
community file of that architecture) then gets its weights written into those constants in memory,
in a fraction of a second: moving the strength slider costs a compile, not a conversion. A graph
whose weights cannot all be swapped (the converter computed some constant from them) is converted
and cached per weights instead.

A network its architecture file splits (RRDBNet: its body and its upsampling tail) is converted as
those stages, so the tail can run in strips of rows (``split``). For a reduced precision, its file
may split it finer, so that its residual sums stay in fp32 (``reduced_precision_networks``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_enhancer import architectures
from image_enhancer.architectures.base import Part, Sum, map_chain
from image_enhancer.runtimes.base import UnsupportedGraphError
from image_enhancer.safe_json import load_json
from image_enhancer.weights.integrity import state_digest, write_atomically

if TYPE_CHECKING:
    import openvino as ov

    from image_enhancer.models.descriptor import LoadedModel

log = logging.getLogger(__name__)

#: Bumped whenever conversion or the map's format changes, so older cache entries are not reused.
EXPORT_VERSION = 1
#: How far the converted network may stray from PyTorch fp32 on the check input (float32 rounding in a
#: differently ordered sum; measured 3e-6 for x4plus).
TOLERANCE = 1e-4


#: This runtime's name (``Runtime.name``), as architecture files list it in ``verified_on``.
NAME = "openvino"
#: OpenVINO's name of each precision a network computes in (its inference precision hint).
HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def supports(architecture: str) -> bool:
    """Only architectures our tests run through OpenVINO: OpenVINO 2026.4's CPU plugin crashes the whole
    process (a segmentation fault, nothing to catch) compiling RealPLKSR and DAT, so an architecture
    file lists OpenVINO in ``verified_on`` only once its family test passes here."""
    return NAME in architectures.get(architecture).verified_on


def graph_digest(module: torch.nn.Module, label: str, hyperparameters: dict) -> str:
    """sha256 of what the converted graph depends on: everything but the weights' values (``label``
    names the architecture, and the stage for a network run in stages)."""
    import openvino as ov

    digest = hashlib.sha256(f"openvino-export-{EXPORT_VERSION}-{ov.get_version()}".encode())
    digest.update(f"{type(module).__qualname__}|{label}|{sorted(hyperparameters.items())!r}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"|{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
    return digest.hexdigest()


def check_input(loaded: LoadedModel) -> torch.Tensor:
    """A small deterministic input the network accepts (its size multiple and minimum honoured)."""
    d = loaded.descriptor
    side = max(16, d.min_size)
    side = -(-side // d.size_multiple) * d.size_multiple
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, d.in_channels, side, side, generator=generator)


def convert(
    module: torch.nn.Module, example: torch.Tensor, architecture: str, shape: tuple[int, ...] | None = None
) -> ov.Model:
    """The network as an OpenVINO model taking ``shape`` (default: any batch and size of ``(N, C, H, W)``)
    float32, checked against PyTorch on ``example``. ``shape`` fixes what the graph needs fixed
    (GFPGAN's modulated convolutions take their weights from the batch: the CPU plugin compiles them
    only for a known batch)."""
    import openvino as ov

    try:
        with torch.inference_mode(False), torch.no_grad():
            shape = shape or (-1, example.shape[1], -1, -1)
            converted = ov.convert_model(module, example_input=example, input=[shape])
    except Exception as error:  # the converter raises many types for graphs it cannot handle
        why = str(error)[:200]
        raise UnsupportedGraphError(f"OpenVINO cannot convert {architecture}: {why}") from error
    try:
        faithful = matches(converted, module, example)
    except RuntimeError as error:  # the CPU plugin refuses to compile an operation of the graph
        why = " ".join(str(error).split())[:200]
        raise UnsupportedGraphError(f"OpenVINO cannot compile {architecture}: {why}") from error
    if not faithful:
        raise UnsupportedGraphError(f"OpenVINO's {architecture} does not match PyTorch's")
    return converted


def _float_constants(model: ov.Model) -> list[ov.Node]:
    return [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).to_dtype() == np.float32
    ]


def _multiple_of(data: np.ndarray, candidates: list[tuple[str, np.ndarray]]) -> tuple[list[str], float]:
    """The keys of the candidates ``data`` is a multiple of (rounding allowed), and the last factor."""
    data = data.reshape(-1)
    found, factor = [], 1.0
    for key, source in candidates:
        largest = int(np.argmax(np.abs(source)))
        if source[largest] == 0:
            continue
        ratio = float(data[largest] / source[largest])
        sample = slice(None, None, max(1, source.size // 16))  # a cheap look first, then every value
        if np.allclose(data[sample], ratio * source[sample], rtol=1e-5, atol=1e-8) and np.allclose(
            data, ratio * source, rtol=1e-5, atol=1e-8
        ):
            found.append(key)
            factor = ratio
    return found, factor


def find_weight_map(model: ov.Model, state: dict[str, torch.Tensor]) -> dict[str, list] | None:
    """Constant name → [state-dict key, factor] for every tensor of ``state``: the constant holds the
    tensor times the factor (the converter folds constant scalings, such as RRDBNet's 0.2 residual
    scale, into the weights before them). None when a tensor has no constant or two tensors look alike.
    """
    exact: dict[bytes, list[str]] = {}
    by_size: dict[int, list[tuple[str, np.ndarray]]] = {}
    for key, tensor in state.items():
        values = _as_float32(tensor)
        exact.setdefault(values.tobytes(), []).append(key)
        if values.size > 1:  # a single number is a multiple of any other
            by_size.setdefault(values.size, []).append((key, values.reshape(-1)))
    mapping: dict[str, list] = {}
    for constant in _float_constants(model):
        data = np.ascontiguousarray(constant.get_data())
        keys, factor = exact.get(data.tobytes()), 1.0
        if not keys and data.size > 1:
            keys, factor = _multiple_of(data, by_size.get(data.size, []))
        if not keys:
            continue
        name = constant.get_friendly_name()
        if len(keys) > 1 or name in mapping:
            return None
        mapping[name] = [keys[0], factor]
    return mapping if {key for key, _ in mapping.values()} == set(state) else None


def swap_weights(model: ov.Model, mapping: dict[str, list], state: dict[str, torch.Tensor]) -> None:
    """Replace the mapped constants of ``model`` by the tensors of ``state`` (times their factors)."""
    import openvino as ov

    for constant in _float_constants(model):
        if constant.get_friendly_name() not in mapping:
            continue
        key, factor = mapping[constant.get_friendly_name()]
        values = _as_float32(state[key]).reshape(tuple(constant.get_output_shape(0)))
        if factor != 1.0:
            values = (values * np.float32(factor)).astype(np.float32)
        replacement = ov.op.Constant(values)
        replacement.set_friendly_name(constant.get_friendly_name())
        for target in list(constant.output(0).get_target_inputs()):
            target.replace_source_output(replacement.output(0))


def run_all(model: ov.Model, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One fp32 forward pass of ``model`` on the CPU: every output, in the network's order."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(batch.numpy())
    return tuple(torch.from_numpy(results[i].copy()) for i in range(len(compiled.outputs)))


def matches(model: ov.Model, module: torch.nn.Module, batch: torch.Tensor) -> bool:
    """Whether every output of ``model`` is within ``TOLERANCE`` of the module's (relative to the
    output's largest value, at least 1)."""
    with torch.inference_mode():
        expected = module(batch)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    got = run_all(model, batch)
    if len(got) != len(expected):
        return False
    for ours, theirs in zip(got, expected, strict=True):
        theirs = theirs.float()
        if ours.shape != theirs.shape:
            return False
        if not (ours - theirs).abs().max() <= TOLERANCE * max(1.0, float(theirs.abs().max())):
            return False
    return True


@dataclass(frozen=True)
class Network:
    """One converted part of a chain. Parts of one graph (RRDBNet's 23 blocks) share one model that
    takes its weights as inputs after the picture: one compiled network, and one working memory, serves
    them all (a compiled network per block held 2.3 GB at 256², and took 23 compiles), at no cost in
    speed (measured: 23 blocks at 128², 1.537 s both ways)."""

    model: ov.Model
    key: str  # one compiled network per key
    halo: int = 0
    fp32: bool = False
    weights: tuple[np.ndarray, ...] = ()


def networks(loaded: LoadedModel, cache_dir: Path) -> list[Network]:
    """``loaded``'s stages as OpenVINO models with its weights, each with its halo."""
    d = loaded.descriptor
    stages = architectures.stages(loaded.module, d.architecture)
    example = check_input(loaded)
    result = []
    for index, stage in enumerate(stages):
        label = d.architecture if len(stages) == 1 else f"{d.architecture} stage {index + 1}"
        model = network(stage.module, example, label, d.hyperparameters, cache_dir)
        result.append(Network(model, f"stage {index + 1}", stage.halo))
        if index + 1 < len(stages):  # the next stage's check input is this one's output
            with torch.inference_mode():
                example = stage.module(example)
    return result


def reduced_precision_networks(loaded: LoadedModel, cache_dir: Path) -> list[Network | Sum[Network]] | None:
    """``loaded`` as its architecture's chain for a reduced precision, converted; None when it has none
    or a repeated part's weights cannot be given as inputs."""
    splitter = architectures.get(loaded.descriptor.architecture).reduced_precision_split
    chain = splitter(loaded.module) if splitter is not None else None
    if chain is None:
        return None
    d = loaded.descriptor
    label = f"{d.architecture} part"
    walked: list[tuple[Part, torch.Tensor]] = []
    with torch.inference_mode():
        _walk(chain, check_input(loaded), walked)
    examples = {id(part): example for part, example in walked}
    digests = {id(part): graph_digest(part.module, label, d.hyperparameters) for part, _ in walked}
    repeats = Counter(digests.values())
    shared: dict[str, tuple[ov.Model, list[tuple[str, float, tuple[int, ...]]]] | None] = {}

    def convert_part(part: Part) -> Network:
        digest, example = digests[id(part)], examples[id(part)]
        if repeats[digest] == 1:
            model = network(part.module, example, label, d.hyperparameters, cache_dir)
            return Network(model, digest, part.halo, part.fp32)
        if digest not in shared:  # converted and mapped once, its constants then made inputs
            model = network(part.module, example, label, d.hyperparameters, cache_dir)
            shared[digest] = _taking_weights(model, Path(cache_dir) / f"{digest}.json")
        if shared[digest] is None:
            raise UnsupportedGraphError(f"{label}'s weights cannot be given as inputs")
        model, order = shared[digest]
        state = part.module.state_dict()
        weights = tuple(
            (_as_float32(state[key]) * np.float32(factor)).reshape(shape) for key, factor, shape in order
        )
        # Parts of one graph in both precisions are compiled once each: the key tells them apart.
        key = f"{digest}-fp32" if part.fp32 else digest
        return Network(model, key, part.halo, part.fp32, weights)

    try:
        return map_chain(chain, convert_part)
    except UnsupportedGraphError as why:
        log.info("no reduced-precision chain: %s", why)
        return None


def _walk(
    chain: list[Part | Sum[Part]], x: torch.Tensor, walked: list[tuple[Part, torch.Tensor]]
) -> torch.Tensor:
    """Runs the chain in PyTorch, noting each part, in order, with its input (its check input for
    conversion)."""
    for item in chain:
        if isinstance(item, Sum):
            x = x + _walk(list(item.parts), x, walked)
        else:
            walked.append((item, x))
            x = item.module(x)
    return x


def _taking_weights(
    model: ov.Model, record: Path
) -> tuple[ov.Model, list[tuple[str, float, tuple[int, ...]]]] | None:
    """``model`` (a graph converted once, ``record`` its weight map) with each mapped weight constant
    turned into an input after the picture, and per input its state-dict key, factor and shape; None
    when the graph has no weight map."""
    import openvino as ov

    mapping = load_json(record, max_bytes=16 << 20).get("weights")
    if mapping is None:
        return None
    inputs, order = list(model.get_parameters()), []
    for constant in _float_constants(model):
        name = constant.get_friendly_name()
        if name not in mapping:
            continue
        shape = tuple(constant.get_output_shape(0))
        weight = ov.op.Parameter(ov.Type.f32, ov.PartialShape(list(shape)))
        weight.set_friendly_name(name)
        for target in list(constant.output(0).get_target_inputs()):
            target.replace_source_output(weight.output(0))
        inputs.append(weight)
        order.append((mapping[name][0], mapping[name][1], shape))
    return ov.Model(model.get_results(), inputs, model.get_friendly_name()), order


def network(
    module: torch.nn.Module,
    example: torch.Tensor,
    label: str,
    hyperparameters: dict,
    cache_dir: Path,
    shape: tuple[int, ...] | None = None,
    swappable: bool = True,
) -> ov.Model:
    """``module`` as an OpenVINO model with its weights, from the cache when its graph (or, for graphs
    whose weights cannot be swapped, these very weights) was converted before. ``shape``: the input
    shape the graph is converted for, -1 where it may vary (default: all but the channels).
    ``swappable=False``: the caller knows the converter computes constants from several of the graph's
    tensors (GFPGAN's noise strengths times its fixed noise), so it is converted whole at once instead
    of first with moved weights only to find that they cannot be swapped."""
    import openvino as ov

    state = module.state_dict()
    graph = graph_digest(module, label if shape is None else f"{label} {tuple(shape)}", hyperparameters)
    cache_dir = Path(cache_dir)
    record = cache_dir / f"{graph}.json"
    if not record.is_file():
        if swappable:
            log.info("converting %s for OpenVINO (once per graph; this takes a while)", label)
            # Converted with every weight moved a little, so no two tensors are alike (freshly
            # initialised networks repeat theirs) and each constant can be told by its content.
            distinct = _moved(module)
            converted = _convert_remembered(distinct, example, label, shape, record)
            mapping = find_weight_map(converted, distinct.state_dict())
            if mapping is not None and _swap_proven(converted, mapping, module, example):
                _save(converted, cache_dir / f"{graph}.xml")
            else:
                mapping = None
        else:
            log.info("converting %s for OpenVINO (once per weights; this takes a while)", label)
            _save(_convert_remembered(module, example, label, shape, record), _whole(cache_dir, state, graph))
            mapping = None
        # Written last: its presence means the model files beside it are complete.
        write_atomically(record, json.dumps({"weights": mapping}).encode())
    known = load_json(record, max_bytes=16 << 20)  # a name per weight of the graph
    if "unsupported" in known:
        raise UnsupportedGraphError(known["unsupported"])
    mapping = known["weights"]
    if mapping is not None:
        model = ov.Core().read_model(cache_dir / f"{graph}.xml")
        swap_weights(model, mapping, state)
        return model
    whole = _whole(cache_dir, state, graph)
    if not whole.is_file():
        log.info("converting %s for OpenVINO (its weights cannot be swapped in)", label)
        _save(convert(module, example, label, shape), whole)
    return ov.Core().read_model(whole)


def _whole(cache_dir: Path, state: dict[str, torch.Tensor], graph: str) -> Path:
    """Where a model converted whole with these weights is kept."""
    return cache_dir / f"{state_digest(state, graph)}.xml"


def _convert_remembered(
    module: torch.nn.Module, example: torch.Tensor, label: str, shape: tuple[int, ...] | None, record: Path
) -> ov.Model:
    """``convert``, its refusal written to the graph's record, so the next model of this graph goes
    straight to PyTorch."""
    try:
        return convert(module, example, label, shape)
    except UnsupportedGraphError as why:
        write_atomically(record, json.dumps({"unsupported": str(why)}).encode())
        raise


def _moved(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every weight value moved by its own 5–15%."""
    moved = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in moved.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(0.85 + 0.1 * torch.rand(tensor.shape, generator=generator))
    return moved


def _swap_proven(
    converted: ov.Model, mapping: dict[str, list], module: torch.nn.Module, batch: torch.Tensor
) -> bool:
    """True when swapping ``module``'s weights into ``converted`` gives what PyTorch gives with them:
    no tensor was also folded into a constant the map does not know."""
    trial = converted.clone()
    swap_weights(trial, mapping, module.state_dict())
    return matches(trial, module, batch)


def _save(model: ov.Model, path: Path) -> None:
    """Write the model's `.xml` and `.bin` so that a reader never sees half of either."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.part.xml")
    ov.save_model(model, partial, compress_to_fp16=False)
    os.replace(partial.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(partial, path)


def _as_float32(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
