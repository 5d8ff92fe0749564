"""Which device a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine. PyTorch alone (no
transformers): a bad device in a spec or an option fails in the time it takes to import PyTorch."""

from __future__ import annotations

import torch

from finechain.errors import FinechainError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU.

    Example:
        >>> pick_device("cpu").type
        'cpu'
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FinechainError(f"unknown device '{name}'", fix="use auto, cpu, cuda or cuda:N", field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinechainError(f"device '{name}' asked for, but CUDA is not available here", fix="use auto or cpu", field="device") from None
    return device
