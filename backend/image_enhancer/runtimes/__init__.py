"""The runtimes a network runs on, behind one registry the engine asks.

Each runtime is a package of its own (``pytorch/``, ``openvino/``, ``ncnn/``): its runner, its graph
exporter, its availability probe, its precision rule and its memory factors, behind one ``Runtime``
object (``base.py``). What they do alike (the chain of stages, strips of rows, the fp32 rerun) is in
``common.py``; memory budgets in ``memory.py``; the CPU's features in ``cpu.py``. Adding a runtime is a
package and a line in ``ALL``.
"""

from __future__ import annotations

from image_enhancer.runtimes import cpu
from image_enhancer.runtimes.base import Runtime
from image_enhancer.runtimes.ncnn import RUNTIME as _NCNN
from image_enhancer.runtimes.openvino import RUNTIME as _OPENVINO
from image_enhancer.runtimes.pytorch import RUNTIME as _PYTORCH

#: Every runtime, in the order candidates are timed and GPUs are listed.
ALL: tuple[Runtime, ...] = (_PYTORCH, _OPENVINO, _NCNN)
#: The runtime that runs every architecture: the reference the measured choice compares with, and
#: where a network goes that another runtime cannot take.
REFERENCE = _PYTORCH


def _by_name(runtimes: tuple[Runtime, ...]) -> dict[str, Runtime]:
    found: dict[str, Runtime] = {}
    for runtime in runtimes:
        if runtime.name in found:
            raise ValueError(f"two runtimes are named {runtime.name!r}")
        found[runtime.name] = runtime
    return found


_BY_NAME = _by_name(ALL)


def get(name: str) -> Runtime:
    """The runtime called ``name``; ValueError for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(_BY_NAME)}") from None


def installed() -> list[Runtime]:
    """The runtimes that can run here, in registry order."""
    return [runtime for runtime in ALL if runtime.available()]


def cpu_order() -> list[Runtime]:
    """The installed runtimes on the CPU, fastest first for this CPU (bench/README.md has the figures).

    x86: OpenVINO (x4plus 1.3–2× faster than PyTorch and ncnn on an AVX-512 Xeon, as fast as ncnn on an
    AVX2 EPYC); then PyTorch where oneDNN has AVX-512 kernels (1.2× faster than ncnn there), else ncnn
    (its Winograd kernels for AVX2). ARM: ncnn's hand-written NEON kernels first.
    """
    import torch

    if cpu.is_arm():
        order = (_NCNN, _OPENVINO, _PYTORCH)
    elif torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        order = (_OPENVINO, _PYTORCH, _NCNN)
    else:
        order = (_OPENVINO, _NCNN, _PYTORCH)
    here = installed()
    return [runtime for runtime in order if runtime in here]
