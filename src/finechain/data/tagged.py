"""Tagging data in JSONL: word lists with their tags, or raw text with character-span entities.

Two kinds of rows, one kind per file (``text`` / ``label`` are the task's ``text_column`` / ``label_column``):

- ``{"text": ["EU", "rejects", "German", "call"], "label": ["B-ORG", "O", "B-MISC", "O"]}``: pre-split words, one BIO
  tag each (the shape of Hugging Face ``tokens`` / ``ner_tags`` exports, with tag names);
- ``{"text": "EU rejects German call", "label": [[0, 2, "ORG"], [11, 17, "MISC"]]}``: raw text and its entities as
  ``[start, end, type]`` character spans, or ``{"start", "end", "label"}`` objects (annotation-tool exports such as
  doccano's). The text is cut into words exactly as raw text is at prediction time (``finechain.data.words``), and a
  word is inside an entity when the two overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finechain.data.conll import check_tag
from finechain.data.inputs import check_one_kind
from finechain.data.readers import json_records
from finechain.data.words import split_words
from finechain.errors import DataError, InMemory
from finechain.io import read_text_file

Location = str | Path | InMemory
SPAN_FIX = 'give entities as [start, end, "TYPE"] character spans, 0 <= start < end <= len(text)'


@dataclass(frozen=True)
class TaggedRow:
    """A text (raw string or word list), one BIO tag per word, and its line; for raw text, its number of entities and
    those that do not start and end where words do (``'Paris' in 'Paris-based'``), widened to whole words."""

    text: str | list[str]
    tags: list[str]
    line: int
    entities: int = 0
    loose: tuple[str, ...] = ()


def _entity(raw: Any, text: str, file: Location, line: int) -> tuple[int, int, str]:
    if isinstance(raw, dict):
        raw = [raw.get("start"), raw.get("end"), raw.get("label", raw.get("type"))]
    if not isinstance(raw, list | tuple) or len(raw) != 3:
        raise DataError(f"entity {json.dumps(raw, default=str)} is not [start, end, type]", file=file, line=line, fix=SPAN_FIX)
    start, end, kind = raw
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)) or not 0 <= start < end <= len(text):
        raise DataError(f"entity span [{start}, {end}] is not inside the text ({len(text)} characters)", file=file, line=line, fix=SPAN_FIX)
    if not isinstance(kind, str) or not kind.strip() or kind.strip() == "O":
        raise DataError(f"entity type {json.dumps(kind)} is not a name", file=file, line=line, fix=SPAN_FIX)
    return start, end, kind.strip()


def tags_from_spans(text: str, entities: Any, file: Location = "", line: int = 0) -> list[str]:
    """One IOB2 tag per word of ``text`` (cut by :func:`split_words`) from character-span entities.

    A word overlapping an entity is inside it; a word that two entities touch (``Paris-London``) belongs to the
    first. Overlapping entities, or one that covers no word, raise a one-line :class:`DataError`.

    Example:
        >>> tags_from_spans("EU rejects German call.", [[0, 2, "ORG"], {"start": 11, "end": 17, "label": "MISC"}])
        ['B-ORG', 'O', 'B-MISC', 'O', 'O']
    """
    return _tag_spans(text, entities, file, line)[0]


def _tag_spans(text: str, entities: Any, file: Location, line: int) -> tuple[list[str], list[str]]:
    """The tags, and each entity that does not start and end where words do, as ``'Paris' in 'Paris-based'``."""
    if not isinstance(entities, list):
        raise DataError(f"entities are a {type(entities).__name__}, not a list", file=file, line=line, fix=SPAN_FIX)
    words = split_words(text)
    tags = ["O"] * len(words)
    loose = []
    previous_end = -1
    for start, end, kind in sorted(_entity(raw, text, file, line) for raw in entities):
        if start < previous_end:
            raise DataError(f"entities overlap at character {start}", file=file, line=line, fix="keep one of the overlapping entities")
        previous_end = end
        inside = [w for w, (a, b) in enumerate(words) if a < end and b > start]
        if not inside:
            raise DataError(f"entity [{start}, {end}] covers no word", file=file, line=line, fix=SPAN_FIX)
        free = [w for w in inside if tags[w] == "O"]
        first, last = words[inside[0]][0], words[inside[-1]][1]
        if first != start or last != end or len(free) < len(inside):
            loose.append(f"{text[start:end]!r} in {text[first:last]!r}")
        for w in free:
            tags[w] = ("B-" if w == free[0] else "I-") + kind
    return tags, loose


def tagged_row(text: Any, label: Any, file: Location, line: int, strict: bool) -> TaggedRow:
    """A checked :class:`TaggedRow` from a word list and its tags, or a raw string and its entity spans.

    Example:
        >>> tagged_row("Peter lives in Berlin", [[15, 21, "LOC"]], "in-memory", 0, strict=False).tags
        ['O', 'O', 'O', 'B-LOC']
    """
    if isinstance(text, str):
        if isinstance(label, list | tuple) and label and all(isinstance(tag, str) for tag in label):
            raise DataError(
                "a tagging text given as a string takes entity spans, not tags",
                file=file,
                line=line,
                fix='split it into words (["Peter", "left"]) to give one tag per word, or give spans: [[0, 5, "PER"]]',
            )
        if not text.strip():
            raise DataError("empty text", file=file, line=line, fix="fill in the text or remove the row")
        tags, loose = _tag_spans(text, label, file, line)
        return TaggedRow(text, tags, line, len(label), tuple(loose))
    if not isinstance(text, list | tuple) or not text or not all(isinstance(w, str) and w.strip() for w in text):
        raise DataError(
            "a tagging text must be a string or a list of words",
            file=file,
            line=line,
            fix='give "Peter lives in Berlin" with entity spans, or ["Peter", "lives", "in", "Berlin"] with tags',
        )
    if not isinstance(label, list | tuple) or len(label) != len(text):
        count = len(label) if isinstance(label, list | tuple) else "no"
        raise DataError(f"{len(text)} words but {count} tags", file=file, line=line, fix="give one BIO tag per word")
    if any(not isinstance(tag, str) for tag in label):
        raise DataError("tags must be names like B-PER, not numbers", file=file, line=line, fix="write the tag names (export them by name)")
    checked: list[str] = []
    for tag in label:
        checked.append(check_tag(tag, checked[-1] if checked else "", file, line, strict))
    return TaggedRow(list(text), checked, line)


def loose_entities_warning(rows: list[TaggedRow], file: str) -> str:
    """A warning naming how many entities were widened to whole words, with the first example, or ``""``.

    Example:
        >>> rows = [tagged_row("Paris-based staff", [[0, 5, "LOC"]], "a.jsonl", 3, strict=False)]
        >>> loose_entities_warning(rows, "a.jsonl")
        "1 of 1 entities do not start and end where words do (a.jsonl:3: 'Paris' in 'Paris-based'); whole words are tagged"
    """
    loose = [(row.line, item) for row in rows for item in row.loose]
    if not loose:
        return ""
    total = sum(row.entities for row in rows)
    line, example = loose[0]
    return f"{len(loose)} of {total} entities do not start and end where words do ({file}:{line}: {example}); whole words are tagged"


def read_tagged_jsonl(path: str | Path, text_column: str = "text", label_column: str = "label", strict: bool = False) -> list[TaggedRow]:
    """Rows of a JSONL tagging file: word lists with tags, or raw texts with entity spans (one kind per file).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ner.jsonl"
        >>> _ = p.write_text('{"text": "Peter met Anna", "label": [[0, 5, "PER"], [10, 14, "PER"]]}\\n')
        >>> [(r.text, r.tags) for r in read_tagged_jsonl(p)]
        [('Peter met Anna', ['B-PER', 'O', 'B-PER'])]
    """
    path = Path(path)
    rows: list[TaggedRow] = []
    for number, record in json_records(path, read_text_file(path)):
        if text_column not in record or label_column not in record:
            raise DataError(
                f"expected an object with '{text_column}' and '{label_column}', found {sorted(record)}",
                file=path,
                line=number,
                fix="set text_column / label_column in the spec",
                field="text_column" if text_column not in record else "label_column",
            )
        row = tagged_row(record[text_column], record[label_column], path, number, strict)
        rows.append(row)
    if not rows:
        raise DataError("file is empty", file=path, fix='write one {"text": ..., "label": ...} object per line')
    check_one_kind([row.text for row in rows], [row.line for row in rows], path)
    return rows
