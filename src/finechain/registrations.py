"""Registries of the training components that the spec names (optimizers, learning-rate schedules).

Their code lives in ``finechain.train`` and needs PyTorch; here the built-ins are registered by import path, so the
spec can check a name without importing the training stack. Register your own with, e.g.,
``SCHEDULES.register("my-schedule", my_factory)`` before loading a spec that uses it.
"""

from __future__ import annotations

from typing import Any

from finechain.registry import Registry

OPTIMIZERS: Registry[Any] = Registry("optimizer")
SCHEDULES: Registry[Any] = Registry("schedule")

OPTIMIZERS.register("adamw", lazy="finechain.train.optim:adamw")
for _name in ("linear", "cosine", "constant"):
    SCHEDULES.register(_name, lazy=f"finechain.train.optim:{_name}_schedule")
