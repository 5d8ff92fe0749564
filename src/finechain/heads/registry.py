"""The head types by name: adding a task type is adding a module that registers its head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finechain.errors import SpecError
from finechain.registry import Registry

if TYPE_CHECKING:
    from finechain.heads.base import Head

HEADS: Registry[type[Head]] = Registry("task type")


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head type available by its ``type_name``.

    Example:
        >>> from finechain.heads import HEADS
        >>> HEADS.names()
        ['classification', 'multilabel', 'prototype', 'regression', 'tagging', 'zero_shot']
    """
    HEADS.register(cls.type_name, cls)
    return cls


def head_type(name: str) -> type[Head]:
    """Look a head type up by name, with a helpful error.

    Example:
        >>> head_type("classification").__name__
        'ClassificationHead'
    """
    if name not in HEADS:
        raise SpecError(f"unknown task type '{name}'", fix=f"use one of {HEADS.names()}", field="type")
    return HEADS.get(name)
