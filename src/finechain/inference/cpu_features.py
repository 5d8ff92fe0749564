"""Whether this CPU has int8 dot-product instructions (VNNI or AMX), read without PyTorch: what decides if an int8
graph made for OpenVINO runs fast here. Without them (e.g. AVX2-only x86 CPUs) OpenVINO falls back to a generic int8
kernel that runs the chain's products several times slower than fp32, while ONNX Runtime runs the same graph at about
fp32's speed (docs/benchmarks.md, section "Export on an AVX2 CPU")."""

from __future__ import annotations

import functools
from pathlib import Path

INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # Linux's names for VNNI (AVX-512 or AVX) and AMX int8


def int8_dot_flags(cpuinfo: str) -> bool | None:
    """Whether the text of ``/proc/cpuinfo`` lists an int8 dot-product instruction set of x86 (VNNI or AMX); ``None``
    when it has no x86 ``flags`` line (another architecture, or not Linux's format), so the caller cannot tell.

    Example:
        >>> int8_dot_flags("flags\\t\\t: fpu sse2 avx2 fma")
        False
        >>> int8_dot_flags("flags\\t\\t: fpu avx2 avx512f avx512_vnni")
        True
        >>> int8_dot_flags("Features\\t: fp asimd asimddp") is None
        True
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return not INT8_DOT_FLAGS.isdisjoint(value.split())
    return None


@functools.cache
def cpu_has_int8_dot() -> bool | None:
    """:func:`int8_dot_flags` of this machine's ``/proc/cpuinfo``; ``None`` where it cannot be read (not Linux).

    Example:
        >>> cpu_has_int8_dot() in (True, False, None)
        True
    """
    try:
        return int8_dot_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return None
