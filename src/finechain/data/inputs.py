"""Check texts handed to predict / score / embed: strings, or word lists for tagging."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from finechain.errors import DataError, FinechainError, InMemory


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
    check_one_kind(items, range(len(items)), InMemory(name))
    return items


def text_size(text: str | Sequence[str]) -> int:
    """Characters of a text; a word list counts one more per word (the space between words).

    Example:
        >>> text_size("a cat"), text_size(["a", "cat"])
        (5, 6)
    """
    return len(text) if isinstance(text, str) else sum(len(word) + 1 for word in text)


def size_blocks(texts: Sequence[Any], max_chars: int, max_texts: int | None = None) -> list[slice]:
    """``texts`` cut into consecutive blocks of at most ``max_texts`` texts and ``max_chars`` characters (a text longer
    than that is a block of its own): what runs at once, so that memory follows the block's size, not the input's.

    Example:
        >>> size_blocks(["ab", "cd", "efgh", "i"], max_chars=4)
        [slice(0, 2, None), slice(2, 3, None), slice(3, 4, None)]
        >>> size_blocks(["a"] * 5, max_chars=100, max_texts=2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    blocks: list[slice] = []
    start, size = 0, 0
    for i, text in enumerate(texts):
        chars = text_size(text)
        if i > start and (size + chars > max_chars or (max_texts is not None and i - start >= max_texts)):
            blocks.append(slice(start, i))
            start, size = i, 0
        size += chars
    if start < len(texts):
        blocks.append(slice(start, len(texts)))
    return blocks


def check_one_kind(texts: Sequence[Any], lines: Iterable[int], file: str | Path) -> None:
    """Raise a one-line error at the first text that is not the same kind (string or word list) as the first text.

    Files and in-memory data alike: a file's ``lines``, or item positions with an :class:`InMemory` name.

    Example:
        >>> check_one_kind(["Peter left", ["Anna", "stayed"]], [1, 3], "ner.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        finechain.errors.DataError: ner.jsonl:3: strings and word lists are mixed: the first text is a string, this one a word list ...
    """
    first_is_string = bool(texts) and isinstance(texts[0], str)
    for text, line in zip(texts, lines, strict=True):
        if isinstance(text, str) != first_is_string:
            kinds = ("a string", "a word list") if first_is_string else ("a word list", "a string")
            raise DataError(
                f"strings and word lists are mixed: the first text is {kinds[0]}, this one {kinds[1]}",
                file=file,
                line=line,
                fix="give every text as a string, or every text as a word list",
            )


def select_tasks(available: Iterable[str], tasks: Sequence[str] | None, owner: str = "this chain") -> list[str]:
    """``tasks`` checked against the ``available`` ones (default: all of them, in their order); an unknown name is a
    one-line error on the ``tasks`` field.

    Example:
        >>> select_tasks(["intent", "ner"], None)
        ['intent', 'ner']
        >>> select_tasks(["intent", "ner"], ["topic"])
        Traceback (most recent call last):
        ...
        finechain.errors.FinechainError: unknown task(s) ['topic'] (fix: this chain has ['intent', 'ner'])
    """
    known = list(available)
    names = known if tasks is None else list(tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FinechainError(f"unknown task(s) {unknown}", fix=f"{owner} has {sorted(known)}", field="tasks")
    return names
