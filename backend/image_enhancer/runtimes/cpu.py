"""The CPU's name and the features that decide which runtime and precision are fastest on it."""

from __future__ import annotations

import platform
from functools import cache


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as the kernel lists them (x86 "flags", ARM "Features"); None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            lines = (line for line in cpuinfo if line.startswith(("flags", "Features")))
            return frozenset(next((line.split(":", 1)[1].split() for line in lines), []))
    except OSError:
        return None


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX)."""
    flags = cpu_flags() or frozenset()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_int8() -> bool:
    """Whether the CPU adds int8 products into 32-bit sums natively (AVX-512 VNNI, AVX-VNNI, AMX)."""
    flags = cpu_flags() or frozenset()
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def native_fp16() -> bool:
    """Whether an ARM CPU has fp16 arithmetic (ARMv8.2 FP16: "fphp" and "asimdhp")."""
    flags = cpu_flags() or frozenset()
    return "fphp" in flags and "asimdhp" in flags


def cpu_features() -> str:
    """The CPU's vector and matrix extensions that decide which runtime and precision are fastest (a
    figure measured on one CPU says little of another without them)."""
    flags = cpu_flags()
    if flags is None:
        return "features unknown"
    named = [
        ("AVX2", "avx2"),
        ("AVX-512", "avx512f"),
        ("VNNI", "avx512_vnni"),
        ("AVX-512 BF16", "avx512_bf16"),
        ("AMX", "amx_tile"),
        ("NEON", "asimd"),
        ("FP16", "fphp"),
    ]
    return ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in named)
