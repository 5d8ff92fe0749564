"""How a task's branch layers are tuned and stored: one registered mode each, with its own options.

A mode works on the layers it is handed (PyTorch modules) but imports no PyTorch itself, so the spec can validate a
``branch:`` block without loading the model stack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from finechain.errors import SpecError
from finechain.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

BRANCH_MODES: Registry[type[BranchMode]] = Registry("branch mode")


class BranchOptions(BaseModel):
    """Options every branch mode has: its name."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "full"


def register_branch_mode(cls: type[BranchMode]) -> type[BranchMode]:
    """Class decorator: make a branch mode available by its ``name``.

    Example:
        >>> from finechain.branches import BRANCH_MODES
        >>> BRANCH_MODES.names()
        ['full', 'lora']
    """
    BRANCH_MODES.register(cls.name, cls)
    return cls


def branch_options(options: BranchOptions | Mapping[str, Any] | None) -> BranchOptions:
    """Validate a ``branch:`` block with its mode's own options (default: full tuning).

    Example:
        >>> branch_options({"mode": "lora", "rank": 4}).rank
        4
    """
    if isinstance(options, BranchOptions):
        return options
    data = dict(options or {})
    name = data.get("mode", "full")
    if name not in BRANCH_MODES:
        raise SpecError(f"unknown branch mode '{name}'", fix=f"use one of {BRANCH_MODES.names()}", field="branch.mode")
    return BRANCH_MODES.get(name).Options.model_validate(data)


def branch_mode(options: BranchOptions | Mapping[str, Any] | None) -> BranchMode:
    """The mode described by ``options`` (``{"mode": "lora", "rank": 8, ...}``; default full tuning).

    Example:
        >>> branch_mode({"mode": "full"}).name
        'full'
    """
    validated = branch_options(options)
    return BRANCH_MODES.get(validated.mode)(validated)


class BranchMode(ABC):
    """Prepares fresh copies of the upper layers for training, and says which tensors a task stores."""

    name: ClassVar[str]
    Options: ClassVar[type[BranchOptions]] = BranchOptions
    default_learning_rate: ClassVar[float] = 1e-4  # the branch learning rate when the spec sets none

    def __init__(self, options: BranchOptions | None = None) -> None:
        self.options = options if options is not None else self.Options(mode=self.name)

    def config(self) -> dict[str, Any]:
        """JSON-able options, ``mode`` included, that rebuild this mode."""
        return self.options.model_dump(mode="json")

    @abstractmethod
    def prepare(self, layers: nn.ModuleList) -> None:
        """Modify ``layers`` in place (add adapters, freeze what is not trained)."""

    @abstractmethod
    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """The branch tensors saved with the task (the rest comes from the backbone)."""

    def merge(self, layers: nn.ModuleList) -> bool:
        """Fold any adapters into the layers' own weights, leaving plain layers (for export and faster inference); return
        whether anything changed. Afterwards the layers are a full branch."""
        return False

    def load_state(self, layers: nn.ModuleList, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`stored_state` saved; every stored tensor must find its place and have its shape."""
        wanted = self.stored_state(layers)
        missing = sorted(set(wanted) - set(state))
        unexpected = sorted(set(state) - set(wanted))
        misshapen = sorted(k for k in set(wanted) & set(state) if tuple(wanted[k].shape) != tuple(state[k].shape))
        if missing or unexpected or misshapen:
            raise ValueError(f"branch weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {misshapen[:3]}")
        layers.load_state_dict(state, strict=False)
