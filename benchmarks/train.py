"""Training speed: a new task trained by finechain (default settings) vs the Hugging Face Trainer, full fine-tune
and peft LoRA, on the same examples in the same run. Reports each system's dev metric, end-to-end time and
samples/s, and finechain's time to first reach the full fine-tune's dev metric.

    python -m benchmarks train [--device cpu|cuda] [--quick] [--tasks sst2,conll2003] [--train-examples 3000]

Selection (best epoch) uses only the validation split cut from the training examples; the dev files are
watched after every epoch from outside the training loop (that time is not counted) and never select anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import DATASETS, Recorder
from benchmarks.peers import hf_sequence_classification, hf_token_classification
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.conll import read_conll
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples
from finechain.model.backbone import resolve_backbone
from finechain.model.heads import head_type
from finechain.model.precision import resolve_precision

TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"type": "classification", "train": "sst2/train.csv", "dev": "sst2/dev.csv", "metric": "accuracy"},
    "conll2003": {"type": "tagging", "train": "conll2003/train.txt", "dev": "conll2003/dev.txt", "metric": "entity_f1"},
}


def dev_set(name: str, limit: int | None) -> tuple[list[Any], list[Any]]:
    """The task's official dev file as (inputs, labels)."""
    if TASKS[name]["type"] == "tagging":
        sentences = read_conll(DATASETS / TASKS[name]["dev"])[:limit]
        return [s.words for s in sentences], [s.tags for s in sentences]
    rows = read_examples(DATASETS / TASKS[name]["dev"])[:limit]
    return [r.text for r in rows], [str(r.label) for r in rows]


def run_finechain(name: str, data: Any, dev: tuple[list[Any], list[Any]], training: TrainingConfig, device: str) -> dict[str, Any]:
    """Train the task with default settings; watch the dev metric after every epoch."""
    spec = TaskSpec(name=name, type=TASKS[name]["type"], train=DATASETS / TASKS[name]["train"])
    chain = Chain.from_backbone(split="auto").to(device)
    watched: list[float] = []

    def watch(epoch: int, task: Any) -> None:
        chain.attach(name, task)
        watched.append(chain.score(name, *dev)[TASKS[name]["metric"]])

    result = chain.fit(spec, training, progress=False, data=data, on_epoch_end=watch)
    final = chain.score(name, *dev)[TASKS[name]["metric"]]
    curve = [(record["elapsed_seconds"], value) for record, value in zip(result.history, watched, strict=True)]
    return {"split": chain.split, "final": final, "seconds": result.train_seconds, "rate": result.samples_per_second, "curve": curve}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 examples, 1 epoch, 200 dev rows: a smoke test")
    parser.add_argument("--tasks", default="sst2,conll2003")
    parser.add_argument("--train-examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dev-limit", type=int, default=None, help="use only the first N dev rows")
    parser.add_argument(
        "--peers", default="full,full-bf16,lora", help="Trainer methods to run next to finechain: full, lora, full-bf16, lora-bf16"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-fp32", dest="finechain_fp32", action="store_false", help="skip finechain's fp32 run when auto is bf16")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.epochs, args.dev_limit, args.peers, args.finechain_fp32 = 300, 1, 200, "full,lora", False

    rec = Recorder("train", args.device)
    backbone, _ = resolve_backbone("all-MiniLM-L6-v2")
    training = TrainingConfig(epochs=args.epochs, seed=args.seed)
    for name in args.tasks.split(","):
        metric, kind = TASKS[name]["metric"], TASKS[name]["type"]
        spec = TaskSpec(name=name, type=kind, train=DATASETS / TASKS[name]["train"], max_train_examples=args.train_examples)
        data = load_task_data(spec, head_type(kind), args.seed)
        dev = dev_set(name, args.dev_limit)
        peer_fn = hf_token_classification if kind == "tagging" else hf_sequence_classification
        targets: dict[str, float] = {}
        for method in filter(None, args.peers.split(",")):
            peer = peer_fn(
                backbone, data.train, {"dev": dev}, data.labels, epochs=args.epochs, seed=args.seed, method=method, device=args.device
            )
            base, _, bf16 = method.partition("-")
            system = "hf-trainer" if base == "full" else f"hf-{base}"
            variant = f"{base} fine-tune, {'bf16' if bf16 else 'fp32'}, {args.epochs} epochs"
            targets[f"{system} {'bf16' if bf16 else 'fp32'}"] = peer.scores["dev"]
            rec.add(name, system, variant, metric, peer.scores["dev"], f"dev {metric}")
            rec.add(name, system, variant, "train_seconds", peer.seconds, "s")
            rec.add(name, system, variant, "samples_per_second", peer.samples_per_second, "samples/s")
            rec.add(name, system, variant, "trainable_parameters", peer.trainable_parameters, "parameters")
        extra = ("fp32",) if args.finechain_fp32 and resolve_precision(args.device, "auto") != "fp32" else ()
        for precision in ("auto", *extra):
            ours = run_finechain(name, data, dev, training.model_copy(update={"precision": precision}), args.device)
            resolved = resolve_precision(args.device, precision)
            label = f"{'default' if precision == 'auto' else 'precision: fp32'} (split={ours['split']}, {resolved})"
            variant = f"{label}, {args.epochs} epochs"
            rec.add(name, "finechain", variant, metric, ours["final"], f"dev {metric} (best epoch on validation)")
            rec.add(name, "finechain", variant, "train_seconds", ours["seconds"], "s")
            rec.add(name, "finechain", variant, "samples_per_second", ours["rate"], "samples/s")
            for epoch, (seconds, value) in enumerate(ours["curve"], start=1):
                rec.add(name, "finechain", f"{label}: after epoch {epoch}", metric, value, f"dev {metric}")
                rec.add(name, "finechain", f"{label}: after epoch {epoch}", "elapsed_seconds", seconds, "s")
            for peer_name, target in targets.items():
                reached = next((seconds for seconds, value in ours["curve"] if value >= target), None)
                if reached is not None:
                    to = f"{label}: to reach {peer_name}'s dev {metric}"
                    rec.add(name, "finechain", to, "time_to_target_seconds", reached, "s")
    print(f"wrote {rec.save('train_quick' if args.quick else 'train', vars(args))}")


if __name__ == "__main__":
    main()
