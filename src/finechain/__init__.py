"""finechain: one pretrained encoder, many task tails.

Importing the package is cheap: ``Chain`` (and with it PyTorch and transformers) loads on first use, so a process
that only reads specs never pays for the model stack.

Example:
    >>> from finechain import Chain
    >>> chain = Chain.from_pretrained("demo-chain")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from finechain.version import __version__

_EXPORTS = {
    "Chain": "finechain.chain",
    "ChainSpec": "finechain.spec",
    "TaskSpec": "finechain.spec",
    "TrainingConfig": "finechain.spec",
    "JointConfig": "finechain.spec",
}

if TYPE_CHECKING:
    from finechain.chain import Chain
    from finechain.spec import ChainSpec, JointConfig, TaskSpec, TrainingConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'finechain' has no attribute {name!r}")


__all__ = ["Chain", "ChainSpec", "JointConfig", "TaskSpec", "TrainingConfig", "__version__"]
