"""Tensors on disk: safetensors only (nothing is ever unpickled), written atomically, read with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from finechain.errors import ArtifactError, short_reason
from finechain.io import atomic_write


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically save tensors as safetensors (contiguous CPU copies).

    Example:
        >>> import tempfile, pathlib
        >>> p = save_tensors(pathlib.Path(tempfile.mkdtemp()) / "w.safetensors", {"w": torch.ones(2)})
        >>> load_tensors(p)["w"].tolist()
        [1.0, 1.0]
    """
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file is an :class:`ArtifactError` naming it.

    Example:
        >>> import tempfile, pathlib
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"; _ = bad.write_bytes(b"not tensors")
        >>> load_tensors(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        finechain.errors.ArtifactError: ...w.safetensors: not a readable safetensors file (...) (fix: re-save or retrain the chain; ...)
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("file missing", file=path, fix="re-save or retrain the chain")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ArtifactError(
            f"not a readable safetensors file ({short_reason(error, 120)})",
            file=path,
            fix="re-save or retrain the chain; the file may be truncated",
        ) from None
