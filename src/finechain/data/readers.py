"""Read labelled text from CSV, TSV and JSONL files, remembering each row's line number."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from finechain.data.inputs import check_one_kind
from finechain.errors import DataError
from finechain.heads import RawLabel
from finechain.io import read_text_file

Format = Literal["auto", "csv", "tsv", "jsonl"]
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


@dataclass(frozen=True)
class Example:
    """One text with its raw label and the 1-based line it starts on."""

    text: str
    label: RawLabel
    line: int


def detect_format(path: Path, fmt: Format) -> Literal["csv", "tsv", "jsonl"]:
    """Pick the reader from ``fmt`` or, for ``auto``, from the file suffix.

    Example:
        >>> detect_format(Path("x.tsv"), "auto")
        'tsv'
    """
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in {".tsv", ".tab"}:
        return "tsv"
    if suffix in {".csv", ".txt"}:
        return "csv"
    fix = "name it .csv, .tsv or .jsonl, or set the task's format: csv, tsv or jsonl"
    raise DataError(f"cannot tell the format from the suffix '{suffix}'", file=path, fix=fix)


def read_examples(
    path: str | Path,
    *,
    fmt: Format = "auto",
    text_column: str = "text",
    label_column: str | None = "label",
) -> list[Example]:
    """Read ``(text, label)`` rows from a CSV, TSV or JSONL file.

    ``label_column=None`` reads unlabelled text. Labels are returned raw: strings for CSV/TSV,
    whatever JSON holds for JSONL (string, number or list).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"; _ = p.write_text("text,label\\nhi,greet\\n")
        >>> read_examples(p)
        [Example(text='hi', label='greet', line=2)]
    """
    path = Path(path)
    content = read_text_file(path)  # first: a missing file or a folder is said as such, before its suffix is looked at
    kind = detect_format(path, fmt)
    if not content.strip():
        raise DataError("file is empty", file=path, fix="add a header and at least one row")
    if kind == "jsonl":
        return _read_jsonl(path, content, text_column, label_column)
    return _read_delimited(path, content, "\t" if kind == "tsv" else ",", text_column, label_column)


def _column_index(path: Path, header: list[str], column: str, role: str) -> int:
    if column not in header:
        raise DataError(
            f"{role} column '{column}' not found; the header has {header}",
            file=path,
            line=1,
            fix=f"set {role}_column in the spec to one of {header}",
            field=f"{role}_column",
        )
    return header.index(column)


def _read_delimited(path: Path, content: str, delimiter: str, text_column: str, label_column: str | None) -> list[Example]:
    csv.field_size_limit(max(csv.field_size_limit(), len(content)))  # a long text is a long field, not a quoting error
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as err:
        raise DataError(f"cannot parse header: {err}", file=path, line=1) from None
    text_idx = _column_index(path, header, text_column, "text")
    label_idx = _column_index(path, header, label_column, "label") if label_column else None
    examples: list[Example] = []
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(f"cannot parse row: {err}", file=path, line=line, fix="check the quoting of this row") from None
        if row:
            if len(row) != len(header):
                raise DataError(
                    f"row has {len(row)} fields but the header has {len(header)}",
                    file=path,
                    line=line,
                    fix="quote fields that contain the delimiter",
                )
            label = row[label_idx].strip() if label_idx is not None else None
            examples.append(Example(row[text_idx].strip(), label, line))
        line = reader.line_num + 1
    return examples


def json_records(path: Path, content: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of JSONL ``content``; a line that is not a JSON object is a
    one-line :class:`DataError` with its line.

    Example:
        >>> list(json_records(Path("a.jsonl"), '{"text": "hi"}\\n\\n{"text": "yo"}\\n'))
        [(1, {'text': 'hi'}), (3, {'text': 'yo'})]
    """
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record: Any = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg}", file=path, line=number, fix="write one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", file=path, line=number, fix='write lines like {"text": ..., "label": ...}')
        yield number, record


def _read_jsonl(path: Path, content: str, text_column: str, label_column: str | None, words: bool = False) -> list[Example]:
    examples: list[Example] = []
    for number, record in json_records(path, content):
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column is not None and column not in record:
                raise DataError(
                    f"{role} field '{column}' missing; the object has {sorted(record)}",
                    file=path,
                    line=number,
                    fix=f"set {role}_column in the spec",
                    field=f"{role}_column",
                )
        text = record[text_column]
        if words and isinstance(text, list) and text and all(isinstance(word, str) for word in text):
            examples.append(Example(text, None, number))  # type: ignore[arg-type]  # pre-split words to tag
            continue
        if not isinstance(text, str):
            found = "null" if text is None else type(text).__name__
            fix = "write the text as a JSON string, or remove the row"
            if words:
                fix = "write the text as a JSON string or a non-empty list of word strings, or remove the row"
            raise DataError(f"text field '{text_column}' is {found}, not a string", file=path, line=number, fix=fix)
        examples.append(Example(text.strip(), record[label_column] if label_column else None, number))
    return examples


@contextmanager
def column_fix(fix: str) -> Iterator[None]:
    """A missing text or label column (or JSON field) raised inside is re-raised with ``fix``, for readers called where
    the spec's ``text_column`` / ``label_column`` is not what the user can change.

    Example:
        >>> try:
        ...     with column_fix("rename the column"):
        ...         raise DataError("text column 'text' not found", file="new.csv", line=1, field="text_column")
        ... except DataError as error:
        ...     str(error)
        "new.csv:1: text column 'text' not found (fix: rename the column)"
    """
    try:
        yield
    except DataError as error:
        if error.field not in {"text_column", "label_column"}:
            raise
        raise DataError(error.message, file=error.file, line=error.line, fix=fix, field=error.field) from None


def read_texts(path: str | Path, text_column: str = "text") -> list[Any]:
    """Read texts to predict: JSONL objects (whose text may be a list of words), a CSV/TSV with a text column, or
    plain lines.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "in.txt"; _ = p.write_text("a\\n\\nb\\n")
        >>> read_texts(p)
        ['a', 'b']
    """
    path = Path(path)
    with column_fix("pass the field that holds the texts: finechain predict --text-column NAME"):  # there is no spec here
        if path.suffix.lower() in JSONL_SUFFIXES:  # a text may also be a list of words (pre-split input for tagging)
            examples = _read_jsonl(path, read_text_file(path), text_column, None, words=True)
            check_one_kind([ex.text for ex in examples], [ex.line for ex in examples], path)
            return [ex.text for ex in examples]
        if path.suffix.lower() in {".csv", ".tsv"}:
            return [ex.text for ex in read_examples(path, text_column=text_column, label_column=None)]
    return [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
