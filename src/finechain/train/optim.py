"""Optimizers and learning-rate schedules, chosen by name (``training.optimizer``, ``training.schedule``).

The names are registered in :mod:`finechain.registrations` (the spec checks them without importing PyTorch); each
factory here takes the same arguments, so adding one is writing a function and registering its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from finechain.registrations import OPTIMIZERS, SCHEDULES
from finechain.spec import TrainingConfig

LearningRate = Callable[[str], float]  # parameter name -> its learning rate


def param_groups(module: torch.nn.Module, learning_rate: LearningRate, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: a learning rate per parameter name, no weight decay on biases and LayerNorm.

    Example:
        >>> groups = param_groups(torch.nn.Linear(2, 2), lambda name: 0.1, 0.01)
        >>> [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        [(0.1, 0.01, 1), (0.1, 0.0, 1)]
    """
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            groups.setdefault((learning_rate(name), no_decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay}
        for (lr, no_decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]


def adamw(module: torch.nn.Module, learning_rate: LearningRate, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, with PyTorch's fused kernel on CPU and CUDA (one kernel per step instead of a
    Python loop over every tensor; the Hugging Face Trainer's default too).

    Example:
        >>> adamw(torch.nn.Linear(2, 2), lambda name: 0.1, 0.01, torch.device("cpu")).defaults["fused"]
        True
    """
    fused = device.type in {"cpu", "cuda"}
    return torch.optim.AdamW(param_groups(module, learning_rate, weight_decay), fused=fused or None)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then linear decay to 0 at ``total_steps`` (the default)."""
    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then half a cosine down to 0 at ``total_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def constant_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then the full learning rate until the end."""
    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


def build_optimizer(
    config: TrainingConfig, module: torch.nn.Module, learning_rate: LearningRate, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names, over ``module``'s trainable parameters.

    Example:
        >>> type(build_optimizer(TrainingConfig(), torch.nn.Linear(2, 2), lambda n: 0.1, torch.device("cpu"))).__name__
        'AdamW'
    """
    return OPTIMIZERS.get(config.optimizer)(module, learning_rate, config.weight_decay, device)


def build_schedule(config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``config.schedule`` names, with ``config.warmup_fraction`` of ``total_steps`` warming up.

    Example:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        >>> schedule = build_schedule(TrainingConfig(schedule="constant", warmup_fraction=0.5), optimizer, 4)
        >>> rates = []
        >>> for _ in range(4):
        ...     rates.append(schedule.get_last_lr()[0]); optimizer.step(); schedule.step()
        >>> rates
        [0.0, 0.5, 1.0, 1.0]
    """
    return SCHEDULES.get(config.schedule)(optimizer, int(config.warmup_fraction * total_steps), total_steps)
