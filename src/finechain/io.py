"""File I/O without surprises: atomic writes (a crash never leaves a half-written file behind) and UTF-8 reads with
one-line errors."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from finechain.errors import DataError, FinechainError, ResourceError

LOCK_FILE = ".finechain.lock"  # in a chain folder while a process writes to it


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the block (they arrive when it ends): creating a temporary file and noting its
    name must not be split by an interrupt, or no ``finally`` knows the file to remove.

    Python runs signal handlers in the main thread, whichever thread the operating system hands the signal to (in a
    process with PyTorch's or a server's threads, often another one), so masking the signal in this thread is not
    enough: the block swaps the handlers for ones that only note the signal, and raises it again once the old ones are
    back (called here, so that the interrupt comes at once). Elsewhere than in the main thread no handler can interrupt
    the block.

    Example:
        >>> import signal
        >>> before = signal.signal(signal.SIGINT, signal.default_int_handler)
        >>> try:
        ...     with _signals_held():
        ...         signal.raise_signal(signal.SIGINT)
        ...         print("the block ends first")
        ... except KeyboardInterrupt:
        ...     print("then the interrupt")
        the block ends first
        then the interrupt
        >>> _ = signal.signal(signal.SIGINT, before)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    held = [sig for sig, handler in previous.items() if handler is not None]  # (None: set outside Python, left alone)
    for sig in held:
        signal.signal(sig, lambda number, _frame: arrived.append(number))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
        for sig in dict.fromkeys(arrived):  # as Python would have run the old handler, now
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


def os_error(error: OSError, path: str | Path, doing: str = "write") -> FinechainError:
    """A one-line error for an operating-system failure on ``path``: no space or a size limit is the machine's
    (:class:`ResourceError`, exit 1), a permission, a read-only disk or a file where a folder should be is the input's.

    Example:
        >>> import errno
        >>> str(os_error(OSError(errno.ENOSPC, "No space left on device"), "out/preds.jsonl"))
        'out/preds.jsonl: cannot write: no space left on device (fix: free some disk space, or write elsewhere)'
    """
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"cannot {doing}: no space left on device", file=path, fix="free some disk space, or write elsewhere")
    if code == errno.EFBIG:
        return ResourceError(
            f"cannot {doing}: the file-size limit was reached", file=path, fix="raise the limit (ulimit -f), or write less"
        )
    if code in (errno.EACCES, errno.EPERM):
        return FinechainError(f"cannot {doing}: permission denied", file=path, fix="choose a path you may write to, or fix its permissions")
    if code == errno.EROFS:
        return FinechainError(f"cannot {doing}: the file system is read-only", file=path, fix="choose a writable folder")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return FinechainError(
            f"cannot {doing}: a file stands where a folder is needed", file=path, fix="choose another path, or move the file"
        )
    if code == errno.EISDIR:
        return FinechainError(f"cannot {doing}: it is a folder, not a file", file=path, fix="give a file path")
    return FinechainError(f"cannot {doing}: {error.strerror or error}", file=path, fix="check the path and the disk")


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file onto ``path``: readers see the old file or the new one, never
    a part. The new file gets the old one's permissions, or the usual ones for a new file (``0666`` less the umask); a
    failure (also Ctrl-C or SIGTERM) removes the temp file, and an operating-system failure is a one-line
    :func:`os_error`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write(p, lambda tmp: tmp.write_text("hi"))
        >>> p.read_text(), oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
        ('hi', True)
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_umask()
        with _signals_held():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmp = Path(tmp_name)
            os.close(fd)
        os.chmod(tmp, mode)  # mkstemp makes 0600: a chain saved by one user must stay readable by the service that serves it
        writer(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise os_error(error, path) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
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
    if path.is_dir():
        raise DataError("this is a folder, not a file", file=path, fix="give the path of a file in it")
    if not path.is_file():
        raise DataError("file not found", file=path, fix="check the path; in a spec, relative paths start from the spec's folder")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise os_error(error, path, "read") from None
    return decode_utf8(data, path)


def decode_utf8(data: bytes, source: str | Path) -> str:
    """``data`` as text; a byte that is not UTF-8 is a one-line :class:`DataError` naming ``source`` and the line.

    Example:
        >>> decode_utf8(b"ok\\n\\xff", "<stdin>")
        Traceback (most recent call last):
        ...
        finechain.errors.DataError: <stdin>:2: not valid UTF-8 (byte 0xff) (fix: re-save the file as UTF-8)
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[err.start]:02x})", file=source, line=line, fix="re-save the file as UTF-8"
        ) from None


def check_folder_path(folder: str | Path) -> None:
    """A file where the folder ``folder`` should be is a one-line error (a folder that is missing is made later).

    Example:
        >>> import tempfile
        >>> check_folder_path(tempfile.mkdtemp())  # a folder: fine
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FinechainError("this is a file, not a folder", file=folder, fix="choose a folder path (it is created if missing)")


@contextmanager
def folder_lock(folder: str | Path, what: str = "writing to", keep: Callable[[Path], bool] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.finechain.lock`` file in it) while the block runs; a second process
    that asks while it is held gets a one-line error instead of interleaving its writes with the first's. The lock goes
    with the process, also when it is killed. A folder this call created and the block left empty (a run that failed
    before writing anything) is removed again, lock file and all, so a failed run leaves nothing behind. With ``keep``,
    a folder this call created is also removed, whatever the block wrote into it, when ``keep(folder)`` is false at the
    end (a training run stopped before anything it wrote could be resumed from).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with folder_lock(folder):
        ...     with folder_lock(folder):  # doctest: +ELLIPSIS
        ...         pass
        Traceback (most recent call last):
        ...
        finechain.errors.FinechainError: ...: another finechain process (pid ...) is writing to this folder (fix: ...)
    """
    folder = Path(folder)
    check_folder_path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # the folder and any parents made for it
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_FILE).open("a+")
    except OSError as error:
        raise os_error(error, folder, "create") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise FinechainError(
                f"another finechain process (pid {holder}) is {what} this folder",
                file=folder,
                fix="wait for it to finish, or choose another folder",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            if created and keep is not None and not _kept(folder, keep):
                _empty_but_lock(folder)  # made by this call and written by no other process (it was locked all along)
            if created:
                _remove_if_only_lock(folder, created)  # still locked: no other process is between the check and the removal
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_if_only_lock(folder: Path, created: list[Path]) -> None:
    """Remove ``folder`` if the lock file is all it holds, besides empty folders (a run's folders made before its first
    file), then the ``created`` parents left empty (best effort: what cannot be read or removed stays)."""
    with suppress(OSError):
        walked = list(os.walk(folder, onerror=_raise))
        files = [Path(root, name) for root, _, names in walked for name in names]
        if files != [folder / LOCK_FILE]:
            return
        (folder / LOCK_FILE).unlink()
        for root, _, _ in reversed(walked):  # the deepest folders first: each is empty by the time it is removed
            Path(root).rmdir()
        for path in created[1:]:  # then its new parents upwards; rmdir refuses any that is not empty
            path.rmdir()


def _kept(folder: Path, keep: Callable[[Path], bool]) -> bool:
    """``keep(folder)``, true (the folder stays) when it cannot tell."""
    try:
        return keep(folder)
    except OSError:
        return True


def _empty_but_lock(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file (best effort: what cannot be removed stays)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        with suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _raise(error: OSError) -> None:
    """``os.walk``'s ``onerror``: a folder that cannot be read stops the walk (instead of being skipped)."""
    raise error


def refuse_existing(path: Path, overwrite: bool) -> None:
    """An existing ``--out`` is refused unless ``overwrite``: a one-line error naming it.

    Example:
        >>> refuse_existing(Path("/nonexistent/out"), overwrite=False)
    """
    if path.exists() and not overwrite:
        raise FinechainError(f"{path} already exists", fix="choose another --out, or pass --overwrite")


@contextmanager
def building_folder(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path`` and put it at ``path`` when the block ends without an
    error: readers see the old folder or the complete new one, never a part. A failure (also Ctrl-C or SIGTERM)
    removes the temporary folder; an existing ``path`` is refused unless ``overwrite``. The folder gets the usual
    permissions (``0777`` less the umask), not the ``0700`` of a temporary folder.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> with building_folder(target) as staging:
        ...     _ = (staging / "a.txt").write_text("hi")
        >>> (target / "a.txt").read_text(), oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
        ('hi', True)
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    staging: Path | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _signals_held():
                staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            os.chmod(staging, 0o777 & ~_umask())
        except OSError as error:
            raise os_error(error, path, "create") from None
        yield staging
        old = staging.with_name(f"{staging.name}.old")
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
