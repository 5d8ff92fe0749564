"""Split sweep: dev accuracy and training time of finechain at several split depths, next to a
Hugging Face Trainer full fine-tune of the same backbone on the same data, in the same run.

    python -m benchmarks split-sweep [--quick] [--train-examples 3000] [--epochs 3]
"""

from __future__ import annotations

import argparse

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, comma_list
from benchmarks.peers import hf_sequence_classification
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples
from finechain.heads import head_type
from finechain.model.backbone import resolve_backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks split-sweep", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run (300 examples, 1 epoch, 2 splits, sst2) for smoke tests")
    parser.add_argument("--tasks", default="sst2,agnews,banking77", type=comma_list(str, CLASSIFICATION_SETS))
    parser.add_argument("--splits", default="6,4,3,2,0", type=comma_list(int))
    parser.add_argument("--train-examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--no-peer", action="store_true", help="skip the Hugging Face Trainer run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="results name (default split_sweep, or split_sweep_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.splits, args.train_examples, args.epochs = ["sst2"], [6, 4], 300, 1

    rec = Recorder("split_sweep", args.device)
    backbone, _ = resolve_backbone(BACKBONE)
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)
    for name in args.tasks:
        train_file, eval_file, eval_kind = CLASSIFICATION_SETS[name]
        spec = TaskSpec(name=name, train=DATASETS / train_file, max_train_examples=args.train_examples)
        data = load_task_data(spec, head_type("classification"), args.seed)
        evaluation = read_examples(DATASETS / eval_file)
        eval_texts, eval_labels = [e.text for e in evaluation], [str(e.label) for e in evaluation]
        metric_name = "accuracy"
        for split in args.splits:
            chain = Chain.from_backbone(BACKBONE, split=split, max_length=args.max_length).to(args.device)
            result = chain.fit(spec, training, progress=False, data=data)
            acc = chain.score(name, eval_texts, eval_labels)["accuracy"]
            variant = f"split={split} ({6 - split} branch layers)"
            rec.add(name, "finechain", variant, metric_name, acc, f"{eval_kind} accuracy")
            rec.add(name, "finechain", variant, "train_seconds", result.train_seconds, "s")
            rec.add(
                name, "finechain", variant, "samples_per_second", len(data.train) * result.epochs_run / result.train_seconds, "samples/s"
            )
            rec.add(name, "finechain", variant, "epochs_run", result.epochs_run, "epochs")
        if not args.no_peer:
            peer = hf_sequence_classification(
                backbone,
                data.train,
                {"eval": (eval_texts, eval_labels)},
                data.labels,
                epochs=args.epochs,
                seed=args.seed,
                max_length=args.max_length,
                device=args.device,
            )
            acc, seconds, speed = peer.scores["eval"], peer.seconds, peer.samples_per_second
            rec.add(name, "hf-trainer", "full fine-tune", metric_name, acc, f"{eval_kind} accuracy")
            rec.add(name, "hf-trainer", "full fine-tune", "train_seconds", seconds, "s")
            rec.add(name, "hf-trainer", "full fine-tune", "samples_per_second", speed, "samples/s")
            rec.add(name, "hf-trainer", "full fine-tune", "epochs_run", args.epochs, "epochs")
    out = rec.save(args.output or ("split_sweep_quick" if args.quick else "split_sweep"), vars(args))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
