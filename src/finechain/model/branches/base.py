"""How a task's branch layers are tuned and stored: one registered strategy per mode."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from finechain.errors import SpecError

BRANCH_MODES: dict[str, type[BranchMode]] = {}


def register_branch_mode(cls: type[BranchMode]) -> type[BranchMode]:
    """Class decorator: make a branch mode available by its ``name``.

    Example:
        >>> from finechain.model.branches import BRANCH_MODES
        >>> sorted(BRANCH_MODES)
        ['full', 'lora']
    """
    BRANCH_MODES[cls.name] = cls
    return cls


def branch_mode(options: dict[str, Any] | None) -> BranchMode:
    """Build the mode described by ``options`` (``{"mode": "lora", "rank": 8, ...}``; default full tuning).

    Example:
        >>> branch_mode({"mode": "full"}).name
        'full'
    """
    options = dict(options or {"mode": "full"})
    name = options.pop("mode", "full")
    if name not in BRANCH_MODES:
        raise SpecError(f"unknown branch mode '{name}'", fix=f"use one of {sorted(BRANCH_MODES)}")
    return BRANCH_MODES[name](**options)


class BranchMode(ABC):
    """Prepares fresh copies of the upper layers for training, and says which tensors a task stores."""

    name: ClassVar[str]
    default_learning_rate: ClassVar[float] = 1e-4  # the branch learning rate when the spec sets none

    def config(self) -> dict[str, Any]:
        """JSON-able options, ``mode`` included, that rebuild this mode."""
        return {"mode": self.name}

    @abstractmethod
    def prepare(self, layers: nn.ModuleList) -> None:
        """Modify ``layers`` in place (add adapters, freeze what is not trained)."""

    @abstractmethod
    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """The branch tensors saved with the task (the rest comes from the backbone)."""

    def load_state(self, layers: nn.ModuleList, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`stored_state` saved; every stored tensor must find its place."""
        _, unexpected = layers.load_state_dict(state, strict=False)
        wanted = set(self.stored_state(layers))
        if unexpected or wanted - set(state):
            raise ValueError(f"branch weights do not fit: missing {sorted(wanted - set(state))[:3]}, unexpected {unexpected[:3]}")
