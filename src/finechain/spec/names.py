"""Name rules shared by the spec's models, and the close name a misspelt one may be a typo of."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # a folder name and a module name: no dots, no slashes


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``name`` is most likely a typo of, or ``None`` when none is close (spec fields, a
    request's fields).

    Example:
        >>> closest_name("learning_rat", ["learning_rate", "epochs"]), closest_name("extra", ["texts", "tasks"])
        ('learning_rate', None)
    """
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
    return close[0] if close else None
