"""Registry of head types: adding a task type is adding a module that registers itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finechain.errors import SpecError

if TYPE_CHECKING:
    from finechain.model.heads.base import Head

HEAD_TYPES: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head type available by its ``type_name``.

    Example:
        >>> from finechain.model.heads import HEAD_TYPES
        >>> sorted(HEAD_TYPES)[:2]
        ['classification', 'multilabel']
    """
    HEAD_TYPES[cls.type_name] = cls
    return cls


def head_type(name: str) -> type[Head]:
    """Look a head type up by name, with a helpful error.

    Example:
        >>> head_type("classification").__name__
        'ClassificationHead'
    """
    if name not in HEAD_TYPES:
        raise SpecError(f"unknown task type '{name}'", fix=f"use one of {sorted(HEAD_TYPES)}")
    return HEAD_TYPES[name]
