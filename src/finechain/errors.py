"""User-facing errors: one line, naming the file, the line and the fix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class InMemory(str):
    """The name of in-memory data (``"train"``, ``"dev"``): errors name the item, ``train[4]``, instead of a file line.

    Example:
        >>> str(FinechainError("empty text", file=InMemory("train"), line=4, fix="fill it in"))
        'train[4]: empty text (fix: fill it in)'
    """


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
        self.indexed = isinstance(file, InMemory)  # ``line`` is a list index
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

    @property
    def where(self) -> str:
        """``file:line``, ``name[index]`` for in-memory data, or ``""``."""
        if self.file is None:
            return ""
        if self.line is None:
            return self.file
        return f"{self.file}[{self.line}]" if self.indexed else f"{self.file}:{self.line}"

    def format(self) -> str:
        """Render as ``file:line: message (fix: ...)``."""
        text = f"{self.where}: {self.message}" if self.file is not None else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text.replace("\n", " ")


def short_reason(error: BaseException, limit: int = 160) -> str:
    """An exception's first line, at most ``limit`` characters (its type's name when it has no message): for one-line
    errors that wrap a library's.

    Example:
        >>> short_reason(ValueError("bad header\\nat byte 12")), short_reason(KeyError())
        ('bad header', 'KeyError')
    """
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


class DataError(FinechainError):
    """A data file is missing, unreadable or inconsistent."""


class SpecError(FinechainError):
    """A chain or task spec is invalid."""


class ArtifactError(FinechainError):
    """A saved chain is incomplete, or its backbone is missing or different."""


class ResourceError(FinechainError):
    """The machine ran out of something (disk space, memory, a file-size limit): not the input's fault. The CLI exits
    with code 1 for it (2 is for input the user can fix)."""

    exit_code = 1


# what an interrupted training command says when its folder holds nothing --resume could continue from
NOTHING_TO_RESUME = "stopped before its first validation check, so nothing is checkpointed; run the same command again"


class Interrupted(BaseException):
    """The process was asked to stop (SIGTERM); raised so that cleanup (temporary files, locks) runs on the way out."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextmanager
def saying_on_interrupt(job: str, left: Callable[[], str]) -> Iterator[None]:
    """Give an interrupt (Ctrl-C, SIGTERM) that leaves this block the attributes ``job`` (what was running) and
    ``left`` (``left()``, called then: what the job leaves, in words), which the command line prints with it.

    Example:
        >>> try:
        ...     with saying_on_interrupt("update", lambda: "the chain is unchanged"):
        ...         raise KeyboardInterrupt
        ... except KeyboardInterrupt as stop:
        ...     print(f"{stop.job}: {stop.left}")
        update: the chain is unchanged
    """
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as stop:
        stop.job, stop.left = job, left()  # type: ignore[union-attr]
        raise
