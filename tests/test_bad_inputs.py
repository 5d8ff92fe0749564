"""The bad-input corpus (tests/bad_inputs): every case gets its exit code and its one-line message, never a traceback,
never a hang, and leaves no half-written or unreadable file behind."""

from __future__ import annotations

import concurrent.futures
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bad_inputs.make_corpus import build

CASES = yaml.safe_load((Path(__file__).resolve().parent / "bad_inputs" / "cases.yaml").read_text())
ROOT = Path(__file__).resolve().parents[1]
UMASK = 0o022


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("bad-inputs") / "corpus")


def _fill(value: Any, root: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{root}", str(root))
    if isinstance(value, list):
        return [_fill(v, root) for v in value]
    if isinstance(value, dict):
        return {_fill(k, root): _fill(v, root) for k, v in value.items()}
    return value


def _unprivileged_prefix() -> list[str] | None:
    """How to run a command so that file permissions apply to it: as root, without the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, "sh", "-c", "test ! -w /proc/1/environ"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def _memory_after_loading(chain: Path) -> int:
    """Address space a process uses once the command line's modules are imported and a chain has answered (VmPeak)."""
    code = (
        "import finechain.cli.app, finechain.jobs.training; from finechain import Chain; "
        f"Chain.from_pretrained({str(chain)!r}).predict(['warm up: thread pools and allocator arenas']); "
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return int(done.stdout.split()[-1]) * 1024


def _limits(limits: dict[str, int]) -> Any:
    def apply() -> None:
        os.umask(UMASK)
        if "fsize" in limits:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit is then an error (EFBIG), not a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
        if "memory" in limits:
            resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))

    return apply


def _start(argv: list[str], root: Path, case: dict[str, Any], prefix: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    command = [*prefix, sys.executable, "-m", "finechain", *argv]
    options: dict[str, Any] = {
        "cwd": root,
        "env": env,
        "stdin": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "preexec_fn": _limits(case.get("limits", {})),
    }
    if "stdout" not in case:
        return subprocess.Popen(command, stdout=subprocess.PIPE, **options)
    with open(case["stdout"], "wb") as stdout:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=stdout, **options)


class _Watcher:
    """Reads a process's stderr as it comes; can wait for a pattern to appear."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process, self.text, self.lock = process, "", threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in iter(lambda: self.process.stderr.read1(4096), b""):  # type: ignore[union-attr]
            with self.lock:
                self.text += raw.decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if re.search(pattern, self.text):
                    return
            if self.process.poll() is not None:
                raise AssertionError(f"ended before {pattern!r} appeared: {self.text[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s: {self.text[-2000:]}")

    def result(self) -> str:
        self.thread.join(timeout=10)
        return self.text


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")] + [p for p in root.rglob(".*.tmp*") if p.is_dir()]


_REPORTED: set[Path] = set()

SERIAL = ("signal", "while_running", "before", "limits")  # timing, memory or order matter: run alone, in their own test


def _run(case: dict[str, Any], corpus: Path) -> tuple[int, str] | str:
    """Run one case; its exit code and stderr, or the reason it is skipped here."""
    memory = case.get("limits", {}).get("memory")
    if isinstance(memory, str):  # "+N": N bytes more than a process with a loaded chain takes here
        case["limits"]["memory"] = _memory_after_loading(corpus / "chains" / "good") + int(memory)
    if case.get("skip_with") == "cuda":
        import torch

        if torch.cuda.is_available():
            return "CUDA is available here"
    prefix: list[str] | None = []
    if case.get("unprivileged"):
        prefix = _unprivileged_prefix()
        if prefix is None:
            return "cannot run a command without permission overrides here"
    timeout = case.get("timeout", 180)
    for argv in case.get("before", []):
        before = _start(argv, corpus, {}, [])
        _, err = before.communicate(timeout=timeout)
        assert before.returncode == 0, err.decode()[-2000:]
    first = None
    if "while_running" in case:
        first = _start(case["while_running"]["argv"], corpus, {}, [])
        _Watcher(first).wait_for(case["while_running"]["after"], timeout)
    process = _start(case["argv"], corpus, case, prefix)
    watch = _Watcher(process)
    try:
        stdin = bytes.fromhex(case["stdin_hex"]) if "stdin_hex" in case else case.get("stdin", "").encode()
        if "signal" in case:
            process.stdin.close()  # type: ignore[union-attr]
            watch.wait_for(case["signal"]["after"], timeout)
            process.send_signal(getattr(signal, case["signal"]["name"]))
        else:
            process.stdin.write(stdin)  # type: ignore[union-attr]
            process.stdin.close()  # type: ignore[union-attr]
        if process.stdout is not None:
            threading.Thread(target=process.stdout.read, daemon=True).start()
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        if first is not None:  # stopped as a user would (SIGTERM), so that it cleans up; a SIGKILL mid-write leaves a temp
            first.terminate()
            try:
                first.wait(timeout=60)
            except subprocess.TimeoutExpired:
                first.kill()
                first.wait()
    return code, watch.result()


@pytest.fixture(scope="module")
def parallel_results(corpus: Path) -> dict[str, tuple[int, str] | str]:
    """The cases that may run side by side, three at a time (most of their time is starting Python and PyTorch)."""
    plain = [_fill(c, corpus) for c in CASES if not any(key in c for key in SERIAL)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return dict(zip([c["name"] for c in plain], pool.map(lambda c: _run(c, corpus), plain), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case: dict[str, Any], corpus: Path, parallel_results: dict[str, tuple[int, str] | str]) -> None:
    case = _fill(case, corpus)
    outcome = parallel_results[case["name"]] if case["name"] in parallel_results else _run(case, corpus)
    if isinstance(outcome, str):
        pytest.skip(outcome)
    code, err = outcome
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case["exit"], f"exit {code}, expected {case['exit']}: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    if "line" in case:
        shown = lines[0] if lines else ""
        assert re.search(case["line"], shown), f"first line {shown!r} does not match {case['line']!r}"
    if "last_line" in case:
        shown = lines[-1] if lines else ""
        assert re.search(case["last_line"], shown), f"last line {shown!r} does not match {case['last_line']!r}"
    if code != 0:  # an error is one line (after the run's own progress lines, for interrupts)
        assert not re.search(r"^\s", lines[-1] if lines else ""), err[-2000:]
    for path in case.get("absent", []):
        assert not Path(path).exists(), f"{path} was left behind"
    for path in case.get("present", []):
        assert Path(path).exists(), f"{path} is missing: what the command had finished is lost"
    for path, mode in case.get("modes", {}).items():
        assert oct(Path(path).stat().st_mode & 0o777) == oct(int(mode, 8)), f"{path} has mode {oct(Path(path).stat().st_mode & 0o777)}"
    left = [path for path in _temp_files(corpus) if path not in _REPORTED]
    _REPORTED.update(left)  # each leftover fails the first case that finds it, not every case after it
    assert left == [], "temporary files were left behind"
