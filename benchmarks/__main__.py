"""Dispatch: ``python -m benchmarks SUITE [options]``; ``report`` regenerates docs/benchmarks.md."""

from __future__ import annotations

import sys

SUITES = {
    "train": "benchmarks.train",
    "split-sweep": "benchmarks.split_sweep",
    "infer": "benchmarks.infer",
    "memory": "benchmarks.memory",
    "sharing": "benchmarks.sharing",
    "decoding": "benchmarks.decoding",
    "mixing": "benchmarks.mixing",
    "small-data": "benchmarks.small_data",
    "branch-batching": "benchmarks.branch_batching",
    "dropout": "benchmarks.dropout",
    "serve": "benchmarks.serve",
    "pass-cost": "benchmarks.pass_cost",
    "export": "benchmarks.export",
    "runtimes": "benchmarks.runtimes",
    "kernels": "benchmarks.kernels",
    "export-embeddings": "benchmarks.export_embeddings",
    "snips": "benchmarks.snips",
    "imbalance": "benchmarks.imbalance",
    "zero-shot": "benchmarks.zero_shot",
    "robustness": "benchmarks.robustness",
    "update": "benchmarks.update",
    "few-shot": "benchmarks.few_shot",
    "tagging-defaults": "benchmarks.tagging_defaults",
    "thresholds": "benchmarks.thresholds",
    "report": "benchmarks.report",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        print(f"usage: python -m benchmarks {{{','.join(SUITES)}}} [--help]", file=sys.stderr)
        raise SystemExit(2)
    import importlib
    import os

    backbone = os.environ.get("FINECHAIN_BENCH_BACKBONE")
    if backbone is not None:  # found before the suite starts: a one-line error, not a traceback after its imports
        from finechain.errors import FinechainError
        from finechain.model.backbone import resolve_backbone

        try:
            resolve_backbone(backbone)
        except FinechainError as error:
            print(f"error: FINECHAIN_BENCH_BACKBONE: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    module = importlib.import_module(SUITES[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
