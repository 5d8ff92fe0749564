"""Serving: a four-task chain behind ``finechain serve`` under concurrent clients, against the chain's offline batch
throughput and against the deployment a user would build otherwise: four single-task fine-tuned models behind LitServe
(one endpoint per task, LitServe's batching on), all four called for every text.

    python -m benchmarks serve [--quick] [--seconds 20] [--clients 1,8,32,64] [--soak-rounds 6] [--workers 2] [--no-peer]

The server runs one worker process per core by default (``--workers``; each worker's model gets its share of the
cores), as a CPU deployment would. Each client sends one text per request and waits for its answer before sending the
next (the chain: one request with every task; the peer: the four endpoints at once, the text counting when all four
answered). Recorded per number of clients: texts answered per second, p50/p95/p99 latency, errors (any status but
200, any transport error); and the server's resident memory before and after the load (all its processes). The load
generator (aiohttp: a third of httpx's CPU per request) shares the machine with the server. Speed does not depend on
the weights, so heads are freshly initialised: every system has the architecture and size of the fine-tuned models it
stands for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks.common import Recorder, comma_list, timed
from benchmarks.infer import TASKS, build_chain, load_texts
from finechain.model.precision import resolve_precision


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (LitServe runs workers in child processes)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
        for child in list(pids[1:]):
            grand = Path(f"/proc/{child}/task/{child}/children")
            if grand.exists():
                pids += [int(p) for p in grand.read_text().split()]
    for p in pids:
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def start(command: list[str], ready_url: str, timeout: float = 300) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


async def load(ask: Any, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` loops, each sending a text and waiting for its answers, for ``seconds``; texts/s and latency."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    stop_at = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            text = texts[next(counter) % len(texts)]
            started = time.monotonic()
            try:
                ok = await ask(http, text)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                latencies.append(time.monotonic() - started)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=clients * 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        began = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.monotonic() - began
    ordered = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "rate": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "errors": errors,
        "answered": len(latencies),
    }


def chain_asker(url: str) -> Any:
    async def ask(http: aiohttp.ClientSession, text: str) -> bool:
        async with http.post(f"{url}/v1/predict", json={"texts": [text]}) as response:
            return response.status == 200 and len((await response.json())["predictions"][0]) == len(TASKS)

    return ask


def peer_asker(url: str) -> Any:
    async def one(http: aiohttp.ClientSession, name: str, text: str) -> bool:
        async with http.post(f"{url}/{name}", json={"text": text}) as response:
            await response.read()
            return response.status == 200

    async def ask(http: aiohttp.ClientSession, text: str) -> bool:
        return all(await asyncio.gather(*(one(http, name, text) for name in TASKS)))

    return ask


def save_peer_models(folder: Path) -> Path:
    """The four single-task models (fresh heads on the backbone), saved as the peer serves them."""
    from benchmarks.infer import build_separate

    tokenizer, models = build_separate(list(TASKS))
    for name, model in models.items():
        model.save_pretrained(folder / name, safe_serialization=True)
        tokenizer.save_pretrained(folder / name)
        (folder / name / "kind.txt").write_text(TASKS[name][0])
    return folder


def measure(
    rec: Recorder, system: str, variant: str, process: subprocess.Popen[bytes], ask: Any, texts: list[str], args: argparse.Namespace
) -> None:
    asyncio.run(load(ask, texts, 4, min(3.0, args.seconds)))  # warm-up: first requests, allocator, caches
    rec.add("4 tasks", system, variant, "rss_mb", rss_mb(process.pid), "MB before the load")
    for clients in args.clients:
        result = asyncio.run(load(ask, texts, clients, args.seconds))
        label = f"{variant}, {clients} client{'s' if clients > 1 else ''}"
        rec.add("4 tasks", system, label, "samples_per_second", result["rate"], "texts/s with all four answers")
        for q in ("p50", "p95", "p99"):
            rec.add("4 tasks", system, label, f"{q}_ms", result[q], "ms")
        rec.add("4 tasks", system, label, "errors", result["errors"], "failed requests")
    rec.add("4 tasks", system, variant, "rss_mb", rss_mb(process.pid), "MB after the load")
    clients = max(args.clients)
    for round_ in range(1, args.soak_rounds + 1):  # does resident memory level off under a steady load?
        result = asyncio.run(load(ask, texts, clients, args.seconds))
        label = f"{variant}, soak round {round_}"
        rec.add(
            "4 tasks", system, label, "rss_mb", rss_mb(process.pid), f"MB after {round_ * args.seconds:.0f} s more at {clients} clients"
        )
        rec.add("4 tasks", system, label, "errors", result["errors"], "failed requests")


def run(args: argparse.Namespace, texts: list[str], rec: Recorder, work: Path) -> None:
    """Build the chain in ``work``, time it offline, then serve it (and the peer) under load."""
    chain = build_chain(args.split, list(TASKS))
    chain.save_pretrained(work / "chain")
    precision = resolve_precision("cpu", "auto")
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    if args.backend == "onnx":  # the exported folder, served and timed offline with ONNX Runtime
        from finechain.export.onnx import export_onnx
        from finechain.inference import Engine
        from finechain.inference.exported import ExportedChain

        export_onnx(chain, work / "onnx")
        engine = Engine(ExportedChain(work / "onnx"), batch_size=64)
        offline = timed(lambda: engine.predict(texts), 1 if args.quick else 3)
        served, variant = work / "onnx", f"finechain serve, split={chain.split}, ONNX Runtime fp32 (finechain export){workers}"
        offline_variant = "offline batch (exported folder, ONNX Runtime, batch 64), fp32"
    else:
        offline = timed(lambda: chain.predict(texts, batch_size=64), 1 if args.quick else 3)
        served, variant = work / "chain", f"finechain serve, split={chain.split}, {precision}{workers}"
        offline_variant = f"offline batch (Chain.predict, batch 64), {precision}"
    rec.add("4 tasks", "finechain", offline_variant, "samples_per_second", len(texts) / offline, "texts/s")
    port = free_port()
    command = [sys.executable, "-m", "finechain", "serve", str(served), "--port", str(port), "--no-access-log"]
    command += ["--max-wait-ms", str(args.max_wait_ms), "--workers", str(args.workers)]
    command += ["--threads", str(args.threads)] if args.threads else []
    server = start(command, f"http://127.0.0.1:{port}/readyz")
    try:
        measure(rec, "finechain", variant, server, chain_asker(f"http://127.0.0.1:{port}"), texts, args)
    finally:
        stop(server)
    if not args.no_peer:
        models = save_peer_models(work / "peer")
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "benchmarks.litserve_peer",
            "--models",
            str(models),
            "--port",
            str(port),
            "--threads",
            str(args.peer_threads),
        ]
        peer = start(command, f"http://127.0.0.1:{port}/health")
        try:
            variant = f"LitServe, 4 single-task endpoints, batching on (64, 5 ms), {args.peer_threads} thread(s) per model"
            measure(rec, "litserve", variant, peer, peer_asker(f"http://127.0.0.1:{port}"), texts, args)
        finally:
            stop(peer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks serve", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s per level, 1 and 8 clients, 200 texts")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per number of clients")
    parser.add_argument("--clients", type=comma_list(int), default=[1, 8, 32, 64])
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--split", default="4", help="trunk depth (4: the sharing benchmark's joint four-task chain)")
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="finechain server processes (default: one per core)"
    )
    parser.add_argument("--threads", type=int, default=None, help="threads of each worker's model (default: the cores shared out)")
    parser.add_argument("--peer-threads", type=int, default=1, help="PyTorch threads of each peer model's worker process")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--soak-rounds", type=int, default=0, help="then this many more rounds at the most clients, resident memory after each"
    )
    parser.add_argument(
        "--backend", default="pytorch", choices=["pytorch", "onnx"], help="serve the chain folder, or its ONNX export (offline timed alike)"
    )
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--output", default=None, help="results name (default: serve, or serve_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.clients, args.texts = 3.0, [1, 8], 200
    texts = load_texts(args.texts)
    rec = Recorder("serve", "cpu")
    work = Path(tempfile.mkdtemp(prefix="finechain-serve-bench-"))
    try:
        run(args, texts, rec, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {rec.save(args.output or ('serve_quick' if args.quick else 'serve'), vars(args))}")


if __name__ == "__main__":
    main()
