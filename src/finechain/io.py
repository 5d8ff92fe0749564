"""File I/O without surprises: atomic writes (a crash never leaves a half-written file behind) and UTF-8 reads with
one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finechain.errors import DataError


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file onto ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write(p, lambda tmp: tmp.write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text.

    Example:
        >>> import tempfile, pathlib
        >>> write_text(pathlib.Path(tempfile.mkdtemp()) / "x.md", "# hi").read_text()
        '# hi'
    """
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write pretty JSON.

    Example:
        >>> import tempfile, pathlib
        >>> write_json(pathlib.Path(tempfile.mkdtemp()) / "x.json", {"a": 1}).read_text()
        '{\\n  "a": 1\\n}\\n'
    """
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 file; a bad byte raises a one-line :class:`DataError` with its line.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_bytes(b"ok\\n")
        >>> read_text_file(p)
        'ok\\n'
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path, fix="check the path; in a spec, relative paths start from the spec's folder")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[err.start]:02x})",
            file=path,
            line=line,
            fix="re-save the file as UTF-8",
        ) from None
