"""Training speed: a new task trained by finechain (default settings) vs the Hugging Face Trainer, full fine-tune
and peft LoRA, on the same examples in the same run. Reports each system's dev metric, end-to-end time and
samples/s, and finechain's time to first reach the full fine-tune's dev metric.

    python -m benchmarks train [--device cpu|cuda] [--quick] [--tasks sst2,conll2003] [--train-examples 3000]
                               [--batch-sizes 32,256] [--peers full,full-bf16,lora]

``--train-examples 0`` trains on the whole training file. ``--batch-sizes`` trains finechain once per batch
size (learning rates scaled by sqrt(batch / 32)) and marks the run with the best *validation* score as the
one chosen; the dev score of every run is recorded. Each run also records its model FLOPs per second (the
layers' matrix products on real, unpadded tokens; attention scores left out) and, on CUDA, that as a share of
the GPU's dense bf16 peak (model FLOP utilisation).

Selection (best validation check, by default two an epoch) uses only the validation split cut from the training
examples; the dev files are watched at every validation check from outside the training loop (that time is not
counted) and never select anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from transformers import AutoTokenizer

from benchmarks.common import BACKBONE, DATASETS, Recorder, comma_list
from benchmarks.peers import hf_sequence_classification, hf_token_classification
from finechain import Chain, ChainSpec, TaskSpec, TrainingConfig
from finechain.branches import BranchMode
from finechain.data.conll import read_conll
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples
from finechain.heads import head_type
from finechain.model.backbone import inspect_backbone, resolve_backbone
from finechain.model.precision import resolve_precision
from finechain.train.loop import Check, Hook, TrainingLoop

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


# dense bf16 tensor-core peak, TFLOP/s, by GPU name fragment (vendor data sheets, SXM parts)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def layer_flops_per_token(backbone: Any) -> tuple[float, int]:
    """Forward FLOPs of one encoder layer per token (its matrix products: Q, K, V, output, two feed-forward),
    and the number of layers."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(backbone))
    return 2.0 * (4 * config.hidden_size**2 + 2 * config.hidden_size * config.intermediate_size), config.num_hidden_layers


def token_count(tokenizer: Any, texts: list[Any]) -> int:
    """Real (unpadded) tokens of ``texts`` as the peers tokenise them (truncated at 128)."""
    split = bool(texts) and isinstance(texts[0], list)
    return sum(len(x) for x in tokenizer(texts, truncation=True, max_length=128, is_split_into_words=split)["input_ids"])


def peak_tflops(device: str) -> float | None:
    """The GPU's dense bf16 peak, when known (None on CPU)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def spec_alone(name: str, training: TrainingConfig) -> ChainSpec:
    """The spec ``finechain train`` reads for this one task: a tagging task alone tunes every layer, at its own rates
    where ``training`` sets none."""
    task = TaskSpec(name=name, type=TASKS[name]["type"], train=DATASETS / TASKS[name]["train"], min_validation=0)
    return ChainSpec(training=training, tasks=[task])


def run_finechain(name: str, data: Any, dev: tuple[list[Any], list[Any]], training: TrainingConfig, device: str) -> dict[str, Any]:
    """Train the task (default settings unless ``training`` says otherwise); watch the dev metric at every validation check."""
    alone = spec_alone(name, training)
    spec = alone.tasks[0]
    split = alone.trunk_depth(inspect_backbone(resolve_backbone(BACKBONE)[0]).num_hidden_layers)
    chain = Chain.from_backbone(BACKBONE, split=split).to(device)
    watched: list[float] = []

    class Watch(Hook):  # scores the dev file at every validation check; its time is left out of the training time
        def on_check(self, loop: TrainingLoop, check: Check) -> None:
            chain.attach(name, loop.module)
            watched.append(chain.score(name, *dev)[TASKS[name]["metric"]])

    result = chain.fit(spec, training, progress=False, data=data, hooks=[Watch()])
    final = chain.score(name, *dev)[TASKS[name]["metric"]]
    curve = [(record["epoch"], record["elapsed_seconds"], value) for record, value in zip(result.history, watched, strict=True)]
    return {
        "split": chain.split,
        "branch_layers": len(chain.tasks[name].branch.layers),
        "final": final,
        "validation": result.validation[TASKS[name]["metric"]],
        "epochs_run": result.epochs_run,
        "checks": len(result.history),
        "seconds": result.train_seconds,
        "rate": result.samples_per_second,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 examples, 1 epoch, 200 dev rows: a smoke test")
    parser.add_argument("--tasks", default="sst2,conll2003", type=comma_list(str, TASKS))
    parser.add_argument("--train-examples", type=int, default=3000, help="0 = the whole training file")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dev-limit", type=int, default=None, help="use only the first N dev rows")
    parser.add_argument(
        "--peers", default="full,full-bf16,lora", help="Trainer methods to run next to finechain: full, lora, full-bf16, lora-bf16"
    )
    parser.add_argument("--batch-sizes", default="32", type=comma_list(int), help="finechain batch sizes; lr scaled by sqrt(batch/32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-fp32", dest="finechain_fp32", action="store_false", help="skip finechain's fp32 run when auto is bf16")
    parser.add_argument(
        "--without-graphs-too", action="store_true", help="on CUDA, rerun the largest batch size with cuda_graphs off (what graphs save)"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", default=None, help="results name (default: train, or train_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.epochs, args.dev_limit, args.peers, args.finechain_fp32 = 300, 1, 200, "full,lora", False

    rec = Recorder("train", args.device)
    backbone, _ = resolve_backbone(BACKBONE)
    (layer_flops, layers), peak = layer_flops_per_token(backbone), peak_tflops(args.device)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)
    cuda = args.device.startswith("cuda")

    def add_flops(name: str, system: str, variant: str, flops: float, seconds: float) -> None:
        rec.add(name, system, variant, "model_tflops_per_second", flops / seconds / 1e12, "TFLOP/s")
        if peak:
            rec.add(name, system, variant, "mfu_percent", 100 * flops / seconds / 1e12 / peak, f"% of {peak:.0f} TFLOP/s bf16")

    for name in args.tasks:
        metric, kind = TASKS[name]["metric"], TASKS[name]["type"]
        # min_validation 0: a --quick run's few hundred examples select on a validation cut as a full-size run does
        train_file = DATASETS / TASKS[name]["train"]
        spec = TaskSpec(name=name, type=kind, train=train_file, max_train_examples=args.train_examples or None, min_validation=0)
        data = load_task_data(spec, head_type(kind), args.seed)
        dev = dev_set(name, args.dev_limit)
        train_tokens, val_tokens = token_count(tokenizer, data.train.texts), token_count(tokenizer, data.validation.texts)
        peer_fn = hf_token_classification if kind == "tagging" else hf_sequence_classification
        targets: dict[str, float] = {}
        for method in filter(None, args.peers.split(",")):
            peer = peer_fn(
                backbone, data.train, {"dev": dev}, data.labels, epochs=args.epochs, seed=args.seed, method=method, device=args.device
            )
            base, _, bf16 = method.partition("-")
            system = "hf-trainer" if base == "full" else f"hf-{base}"
            precision = "bf16" if bf16 or cuda else "fp32"  # the peers' recipe turns bf16 on for CUDA
            variant = f"{base} fine-tune, {precision}, batch 32, {args.epochs} epochs"
            targets[f"{system} {precision}"] = peer.scores["dev"]
            rec.add(name, system, variant, metric, peer.scores["dev"], f"dev {metric}")
            rec.add(name, system, variant, "train_seconds", peer.seconds, "s")
            rec.add(name, system, variant, "samples_per_second", peer.samples_per_second, "samples/s")
            rec.add(name, system, variant, "trainable_parameters", peer.trainable_parameters, "parameters")
            add_flops(name, system, variant, 3 * layers * layer_flops * train_tokens * args.epochs, peer.seconds)
        extra = ("fp32",) if args.finechain_fp32 and resolve_precision(args.device, "auto") != "fp32" else ()
        sizes = args.batch_sizes
        best: tuple[float, str] | None = None
        runs = [("auto", size, True) for size in sizes] + [(p, sizes[0], True) for p in extra]
        if args.without_graphs_too and cuda:
            runs.append(("auto", max(sizes), False))
        for precision, batch_size, graphs in runs:
            scale = (batch_size / 32) ** 0.5
            update = {"precision": precision, "batch_size": batch_size, "cuda_graphs": graphs}
            name_part = "default" if precision == "auto" else "precision: fp32"
            if batch_size != 32:
                used = spec_alone(name, training).tasks[0].training.apply(training)  # the rates at batch 32
                branch_rate = used.learning_rate or BranchMode.default_learning_rate
                update |= {"learning_rate": branch_rate * scale, "head_learning_rate": used.head_learning_rate * scale}
                name_part = f"batch {batch_size}, lr x{scale:.2g}"
            if not graphs:
                name_part += ", no CUDA graphs"
            ours = run_finechain(name, data, dev, training.model_copy(update=update), args.device)
            label = f"{name_part} (split={ours['split']}, {resolve_precision(args.device, precision)})"
            variant = f"{label}, {args.epochs} epochs"
            rec.add(name, "finechain", variant, metric, ours["final"], f"dev {metric} (best validation check)")
            rec.add(name, "finechain", variant, f"validation_{metric}", ours["validation"], f"validation {metric}")
            rec.add(name, "finechain", variant, "train_seconds", ours["seconds"], "s")
            rec.add(name, "finechain", variant, "samples_per_second", ours["rate"], "samples/s")
            epochs_run = ours["epochs_run"]
            branch = 2 * layer_flops * ours["branch_layers"]
            flops = 2 * layer_flops * ours["split"] * (train_tokens + val_tokens) + epochs_run * 3 * branch * train_tokens
            flops += ours["checks"] * branch * val_tokens
            add_flops(name, "finechain", variant, flops, ours["seconds"])
            if precision == "auto" and graphs and (best is None or ours["validation"] > best[0]):
                best = (ours["validation"], variant)
            for epoch, seconds, value in ours["curve"]:
                rec.add(name, "finechain", f"{label}: after epoch {epoch}", metric, value, f"dev {metric}")
                rec.add(name, "finechain", f"{label}: after epoch {epoch}", "elapsed_seconds", seconds, "s")
            for peer_name, target in targets.items():
                reached = next((seconds for _, seconds, value in ours["curve"] if value >= target), None)
                if reached is not None:
                    to = f"{label}: to reach {peer_name}'s dev {metric}"
                    rec.add(name, "finechain", to, "time_to_target_seconds", reached, "s")
        if len(sizes) > 1 and best is not None:
            rec.add(name, "finechain", f"chosen on validation: {best[1]}", f"validation_{metric}", best[0], f"validation {metric}")
    print(f"wrote {rec.save(args.output or ('train_quick' if args.quick else 'train'), vars(args))}")


if __name__ == "__main__":
    main()
