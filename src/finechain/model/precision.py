"""Numeric precision: which one ``auto`` means on this machine, and the autocast context that applies it."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX tiles (Intel Xeon 4th gen and later), where bf16 matrix products run natively."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a private PyTorch probe: treat any failure as "no"
        return False


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``auto`` becomes ``bf16`` on GPUs that support it and on CPUs with native bf16 (AMX), else ``fp32``.

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


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision (weights stay fp32; matrix products in bf16/fp16) as resolved by :func:`resolve_precision`.

    Example:
        >>> autocast_context(torch.device("cpu"), "fp32").__class__.__name__
        'nullcontext'
    """
    device = torch.device(device)
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16)
