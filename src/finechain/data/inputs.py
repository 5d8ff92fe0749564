"""Check texts handed to predict / score / embed: strings, or word lists for tagging."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finechain.errors import DataError, InMemory


def as_texts(texts: str | Iterable[Any], name: str = "texts") -> list[Any]:
    """``texts`` as a list (one string becomes a list of one): all strings, or all word lists (tuples become
    lists). Any other item is an error naming its position, e.g. a missing value read from a spreadsheet.

    Example:
        >>> as_texts((["a", "cat"], ("a", "dog")))
        [['a', 'cat'], ['a', 'dog']]
        >>> as_texts(["fine", None])
        Traceback (most recent call last):
        ...
        finechain.errors.DataError: texts[1]: None is not a text (fix: pass strings (word lists for tagging); drop or fill missing values)
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, item in enumerate(items):
        if isinstance(item, str):
            continue
        if isinstance(item, list | tuple) and all(isinstance(word, str) for word in item):
            items[i] = list(item)
            continue
        raise DataError(
            f"{item!r} is not a text",
            file=InMemory(name),
            line=i,
            fix="pass strings (word lists for tagging); drop or fill missing values",
        )
    kinds = {isinstance(item, str) for item in items}
    if len(kinds) > 1:
        first = next(i for i, item in enumerate(items) if isinstance(item, str) != isinstance(items[0], str))
        raise DataError(
            "strings and word lists are mixed in one call", file=InMemory(name), line=first, fix="pass only strings, or only word lists"
        )
    return items
