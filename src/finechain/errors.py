"""User-facing errors: one line, naming the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path


class FinechainError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits with code 2.

    Example:
        >>> str(FinechainError("empty text", file="train.csv", line=7, fix="remove the row"))
        'train.csv:7: empty text (fix: remove the row)'
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        fix: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.fix = fix
        self.field = field  # the chain-spec field behind the error, so a caller holding the spec can point at its line
        super().__init__(self.format())

    def at(self, file: str | Path, line: int | None) -> FinechainError:
        """The same error, located in ``file`` at ``line`` (e.g. the spec line that set the bad value).

        Example:
            >>> str(FinechainError("split 9 is outside 0..6", field="split").at("chain.yaml", 3))
            'chain.yaml:3: split 9 is outside 0..6'
        """
        return type(self)(self.message, file=file, line=line, fix=self.fix, field=self.field)

    def format(self) -> str:
        """Render as ``file:line: message (fix: ...)``."""
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        text = f"{where}{self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text.replace("\n", " ")


class DataError(FinechainError):
    """A data file is missing, unreadable or inconsistent."""


class SpecError(FinechainError):
    """A chain or task spec is invalid."""


class ArtifactError(FinechainError):
    """A saved chain is incomplete, or its backbone is missing or different."""
