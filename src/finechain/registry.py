"""Named registries of components (head types, branch modes, optimizers, schedules, objectives).

A registry maps a name to an object, or to a ``"module:attribute"`` string that is imported on first use: the
validated spec can list and check names without importing what they name (PyTorch, peft).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> components of one kind, e.g. ``schedules``.

    Example:
        >>> colours = Registry("colour")
        >>> colours.register("red", "0xff0000")
        '0xff0000'
        >>> colours.get("red"), colours.names()
        ('0xff0000', ['red'])
        >>> colours.get("blue")
        Traceback (most recent call last):
        ...
        KeyError: "unknown colour 'blue'; use one of ['red']"
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T | str] = {}
        self._lazy: set[str] = set()

    def register(self, name: str, obj: T | None = None, *, lazy: str | None = None) -> Any:
        """Add ``obj`` under ``name`` (as a decorator when ``obj`` is left out), or a ``lazy="module:attribute"`` import
        path resolved by :meth:`get`."""
        if lazy is not None:
            self._entries[name] = lazy
            self._lazy.add(name)
            return None
        if obj is None:

            def decorate(target: T) -> T:
                self._entries[name] = target
                self._lazy.discard(name)
                return target

            return decorate
        self._entries[name] = obj
        self._lazy.discard(name)
        return obj

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def check(self, name: str) -> str:
        """``name`` if it is registered, else a ``KeyError`` that lists the choices (for validators)."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} '{name}'; use one of {self.names()}")
        return name

    def get(self, name: str) -> T:
        """The component registered as ``name`` (imported now if it was registered lazily)."""
        entry = self._entries[self.check(name)]
        if name in self._lazy:
            module, _, attribute = str(entry).partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
            self._lazy.discard(name)
        return entry  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def named(registry: Registry[Any]) -> Callable[[str], str]:
    """A pydantic ``AfterValidator`` body: the value must be a name in ``registry``.

    Example:
        >>> shapes = Registry("shape"); _ = shapes.register("square", 4)
        >>> named(shapes)("circle")
        Traceback (most recent call last):
        ...
        ValueError: unknown shape 'circle'; use one of ['square']
    """

    def check(name: str) -> str:
        try:
            return registry.check(name)
        except KeyError as error:
            raise ValueError(error.args[0]) from None

    return check
