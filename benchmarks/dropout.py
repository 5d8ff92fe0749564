"""What finechain's cheaper CPU dropout masks save per training step. The default new-task tail (frozen trunk, 4
full branch layers, head) trains on real length-bucketed batches of SST-2 and CoNLL-2003 in one process, switching
between PyTorch's own dropout (``nn.Dropout`` and SDPA's attention dropout: one ``bernoulli_`` draw per element)
and finechain's (``finechain.model.dropout``: one 64-bit draw per four elements), interleaved: each repeat times a
block of steps of one, then of the other. Reports the median time per optimizer step (forward, backward, gradient
clipping, fused AdamW) and the ratio, under ``precision: auto`` and fp32.

    python -m benchmarks dropout [--quick] [--examples 1024] [--steps 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from benchmarks.common import BACKBONE, DATASETS, DROPOUT_VARIANTS, Recorder, comma_list
from benchmarks.train import TASKS
from finechain import TaskSpec
from finechain.data.batching import index_tensor, length_batches
from finechain.data.prepare import load_task_data
from finechain.heads import head_type
from finechain.model.chain_model import ChainModel
from finechain.model.dropout import ATTENTION, FastDropout
from finechain.model.precision import autocast_context, resolve_precision
from finechain.model.task import TaskModel
from finechain.train.features import TrunkFeatures
from finechain.train.optim import adamw


def use_variant(task: TaskModel, variant: str) -> None:
    """Switch ``task``'s dropout modules and attention function to ``variant`` (``torch`` or ``finechain``)."""
    for module in task.modules():
        if isinstance(module, nn.Dropout):
            module.__class__ = FastDropout if variant == "finechain" else nn.Dropout
    for config in {id(m.config): m.config for m in task.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}.values():
        config._attn_implementation = ATTENTION if variant == "finechain" else "sdpa"


def time_variants(
    task: TaskModel, features: TrunkFeatures, targets: torch.Tensor, precision: str, batches: list[list[int]], steps: int, repeats: int
) -> tuple[dict[str, list[float]], int]:
    """Seconds per step of each variant in each repeat (the same ``steps`` batches for both, one block after the
    other), and how many samples one variant's blocks held in all."""
    optimizer = adamw(task, lambda _: 1e-4, 0.01, features.device)

    def step(batch: list[int]) -> None:
        hidden, mask = features.batch(batch)
        with autocast_context(features.device, precision):
            logits = task(hidden, mask)
        task.loss(logits, targets[index_tensor(batch, features.device)]).backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {v: [] for v in DROPOUT_VARIANTS}
    samples = 0
    for repeat in range(repeats):
        block = [batches[(repeat * steps + i) % len(batches)] for i in range(steps + 1)]
        samples += sum(len(b) for b in block[1:])
        for variant in DROPOUT_VARIANTS:
            use_variant(task, variant)
            step(block[0])  # warm-up after the switch
            start = time.perf_counter()
            for batch in block[1:]:
                step(batch)
            times[variant].append((time.perf_counter() - start) / steps)
    return times, samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dropout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="128 examples, 4 steps, 1 repeat")
    parser.add_argument("--tasks", default="sst2,conll2003", type=comma_list(str, TASKS))
    parser.add_argument("--examples", type=int, default=1024, help="training examples whose batches are cycled through")
    parser.add_argument("--steps", type=int, default=16, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.steps, args.repeats = 128, 4, 1
    rec = Recorder("dropout", "cpu")
    model = ChainModel.from_backbone(BACKBONE)
    for name in args.tasks:
        kind = TASKS[name]["type"]
        spec = TaskSpec(name=name, type=kind, train=DATASETS / TASKS[name]["train"], max_train_examples=args.examples)
        data = load_task_data(spec, head_type(kind), args.seed)
        ids, words = model.encode(data.train.texts, with_words=kind == "tagging")
        features = TrunkFeatures(model.trunk, ids, model.pad_id)
        generator = torch.Generator().manual_seed(args.seed)
        batches = length_batches(features.lengths, args.batch_size, shuffle=True, generator=generator)
        for precision in ("auto", "fp32"):
            torch.manual_seed(args.seed)
            task = model.new_task(head_type(kind)(data.labels)).train()
            targets = torch.from_numpy(task.head.targets(data.train.labels, words))

            times, samples = time_variants(task, features, targets, precision, batches, args.steps, args.repeats)
            resolved = resolve_precision(model.device, precision)
            for variant, label in DROPOUT_VARIANTS.items():
                ms = 1000 * statistics.median(times[variant])
                rec.add(name, "finechain", f"{label}, {resolved}", "ms_per_step", ms, f"ms per step, batch {args.batch_size}")
                rate = samples / (sum(times[variant]) * args.steps)  # times are seconds per step
                rec.add(name, "finechain", f"{label}, {resolved}", "samples_per_second", rate, "samples/s")
    print(f"wrote {rec.save('dropout_quick' if args.quick else 'dropout', vars(args))}")


if __name__ == "__main__":
    main()
