"""Numeric precision: which one ``auto`` means on this machine, and the autocast context that applies it."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions: AMX tiles (Intel Xeon 4th gen and later) or AVX512-BF16 (AMD Zen 4
    and later, Intel Cooper Lake). There bf16 autocast predicts about 2x and trains about 1.5x faster than fp32 at the
    same accuracy (docs/benchmarks.md, an AMD EPYC with AVX512-BF16); without them bf16 is emulated and slower."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # private PyTorch probes: treat any failure as "no"
            continue
    return False


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``auto`` becomes ``bf16`` on GPUs that support it and on CPUs with native bf16 (AMX or AVX512-BF16), else ``fp32``.

    Example:
        >>> resolve_precision("cpu", "fp32"), resolve_precision("cpu", "bf16")
        ('fp32', 'bf16')
    """
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast_context(device: torch.device | str, precision: str, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision (weights stay fp32; matrix products in bf16/fp16) as resolved by :func:`resolve_precision`.
    ``cache=False`` recasts weights at each use (needed inside a CUDA graph, whose capture must not reuse casts
    made outside it).

    Example:
        >>> autocast_context(torch.device("cpu"), "fp32").__class__.__name__
        'nullcontext'
    """
    device = torch.device(device)
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16, cache_enabled=cache)
