"""Layer mixing: does a head that reads a learned mix of every layer (``layer_mix: true``) beat one that reads
only the last layer? Measured on a sentence task (SST-2) and a token task (CoNLL-2003) at several split depths,
frozen trunk, same data and settings for both.

    python -m benchmarks mixing [--quick] [--train-examples 2000] [--splits 6,4,2]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import BACKBONE, Recorder, comma_list
from benchmarks.sharing import METRIC, task_specs
from finechain import Chain, TrainingConfig
from finechain.data.prepare import load_task_data
from finechain.heads import head_type

TASKS = ("sst2", "conll2003")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks mixing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 examples, 1 epoch, split 6 only")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--splits", default="6,4,2", type=comma_list(int))
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.epochs, args.splits = 300, 1, [6]
    rec = Recorder("mixing", args.device)
    specs, evaluation = task_specs(args.train_examples, 100 if args.quick else 1000, 200 if args.quick else None)
    specs = [s for s in specs if s.name in TASKS]
    datas = {s.name: load_task_data(s, head_type(s.type), args.seed) for s in specs}
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)
    learned: dict[str, list[float]] = {}
    for split in args.splits:
        for mix in (False, True):
            chain = Chain.from_backbone(BACKBONE, split=split).to(args.device)
            variant = f"split={split}, {'layer mix' if mix else 'last layer'}"
            for spec in specs:
                start = time.perf_counter()
                chain.fit(
                    spec.model_copy(update={"head": spec.head.model_copy(update={"layer_mix": mix})}),
                    training,
                    progress=False,
                    data=datas[spec.name],
                )
                seconds = time.perf_counter() - start
                texts, labels = evaluation[spec.name]
                unit = "dev accuracy" if spec.name == "sst2" else f"test {METRIC[spec.name]}"
                rec.add(spec.name, "finechain", variant, METRIC[spec.name], chain.score(spec.name, texts, labels)[METRIC[spec.name]], unit)
                rec.add(spec.name, "finechain", variant, "train_seconds", seconds, "s")
                if mix:
                    learned[f"{spec.name} {variant}"] = chain.tasks[spec.name].layer_mix.layer_weights()
    print(f"wrote {rec.save('mixing_quick' if args.quick else 'mixing', {**vars(args), 'learned_layer_weights': learned})}")


if __name__ == "__main__":
    main()
