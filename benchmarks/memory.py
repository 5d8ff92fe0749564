"""Memory: peak resident memory of a process serving 1 and 4 tasks, one chain vs one model per task.

    python -m benchmarks memory [--quick] [--split auto] [--device cpu|cuda] [--output memory_gpu]

Each measurement is a fresh child process that loads the system and predicts 200 real texts; its peak RSS is
``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` would inherit the parent's peak across fork + exec). On CUDA
the peak GPU memory allocated by PyTorch is recorded too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import ROOT, Recorder
from benchmarks.infer import TASKS, build_chain, build_separate, load_texts, run_separate


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(system: str, n_tasks: int, split: str, device: str) -> dict[str, float]:
    """Load ``system`` for the first ``n_tasks`` tasks, predict 200 texts, report peak memory."""
    texts = load_texts(200)
    tasks = list(TASKS)[:n_tasks]
    if system == "finechain":
        build_chain(split, tasks).to(device).predict(texts)
    else:
        tokenizer, models = build_separate(tasks, device)
        run_separate(tokenizer, models, texts)
    out = {"rss_mb": peak_rss_mb()}
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 4 tasks for finechain only")
    parser.add_argument("--split", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="results name (default: memory, or memory_quick); e.g. memory_gpu")
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.split, args.device)))
        return
    rec = Recorder("memory", args.device)
    for system in ("finechain",) if args.quick else ("finechain", "hf-separate"):
        for n_tasks in (1, 4):
            command = [sys.executable, "-m", "benchmarks", "memory", "--child", system, str(n_tasks), "--split", args.split]
            done = subprocess.run([*command, "--device", args.device], capture_output=True, text=True, check=True, cwd=ROOT)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            variant = f"split={args.split}" if system == "finechain" else "one model per task"
            for metric, value in measured.items():
                rec.add(f"{n_tasks} task{'s' if n_tasks > 1 else ''}", system, variant, metric, value, "MB")
    name = args.output or ("memory_quick" if args.quick else "memory")
    print(f"wrote {rec.save(name, {k: v for k, v in vars(args).items() if k != 'child'})}")


if __name__ == "__main__":
    main()
