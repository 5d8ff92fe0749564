"""Sharing modes on four tasks at once (SST-2, AG News, Banking77, CoNLL-2003): per-task metric, trainable and
stored parameters, training time and four-task CPU throughput, next to Hugging Face Trainer single-task full
fine-tunes of the same backbone on the same data, in the same run.

    python -m benchmarks sharing [--quick] [--train-examples 2000] [--modes frozen:2,frozen:4,joint:4,lora:2]
    python -m benchmarks sharing --train-examples 0 --modes joint:4 --peer-method full-bf16 --output sharing_full
    python -m benchmarks sharing --modes joint:4 --peer-tasks sst2,agnews --seeds 14,15,16 --output sharing_seeds

``--train-examples 0`` trains on every example of each training file (the full-data run).

Modes: ``frozen:S`` = pretrained trunk of S layers + fully tuned branches; ``joint:S`` = trunk of S layers tuned
jointly on all tasks (MT-DNN style), then each branch refined alone (up to --epochs, early stopping); ``joint-add:S`` = the same on AG News,
Banking77 and CoNLL only, then SST-2 trained later on the frozen tuned trunk (what ``add-task`` does);
``lora:S`` = pretrained trunk + LoRA branches; a joint mode with ``@RATE`` (``joint:4@2e-4``) tunes its trunk at that
rate instead of JointConfig's default. ``--peer-learning-rates 5e-5,1e-4,2e-4 --peer-tasks banking77 --modes ""``
gives the peer a learning-rate search on validation data.
Selection uses validation data only (cut from train; CoNLL's dev file); reported metrics are on the SST-2 dev and the
AG News / Banking77 / CoNLL-2003 test files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, comma_list, scratch_folder, timed
from benchmarks.peers import hf_sequence_classification, hf_token_classification
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.branches import LoraOptions
from finechain.data.conll import read_conll
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples
from finechain.heads import head_type
from finechain.model.backbone import resolve_backbone
from finechain.spec import JointConfig

METRIC = {"sst2": "accuracy", "agnews": "accuracy", "banking77": "accuracy", "conll2003": "entity_f1"}


KINDS = ("frozen", "joint", "joint-add", "lora")


def sharing_mode(text: str) -> tuple[str, int, float | None]:
    """``KIND:SPLIT`` (a joint kind may add ``@TRUNK_RATE``) -> ``(kind, split, trunk rate or None)``.

    Example:
        >>> sharing_mode("joint:4@2e-4"), sharing_mode("frozen:2")
        (('joint', 4, 0.0002), ('frozen', 2, None))
    """
    kind, _, rest = text.partition(":")
    split, at, rate = rest.partition("@")
    if kind not in KINDS or not split.isdigit() or (at and (not kind.startswith("joint") or not rate)):
        raise ValueError(text)
    return kind, int(split), float(rate) if at else None


def checked_modes(text: str) -> str:
    """``--modes`` as written (what the settings record), once every mode in it is known to parse."""
    comma_list(sharing_mode)(text)
    return text


def task_specs(n: int | None, dev_sentences: int, eval_limit: int | None) -> tuple[list[TaskSpec], dict[str, tuple[list, list]]]:
    # min_validation 0: joint training selects on every task's validation data, also in --quick runs of 200 examples
    specs = [
        TaskSpec(name=name, train=DATASETS / CLASSIFICATION_SETS[name][0], max_train_examples=n, min_validation=0)
        for name in ("sst2", "agnews", "banking77")
    ]
    dev = read_conll(DATASETS / "conll2003/dev.txt")[:dev_sentences]
    dev_file = scratch_folder("conll-dev-") / "dev.conll"
    dev_file.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags, strict=True)) for s in dev) + "\n")
    specs.append(TaskSpec(name="conll2003", type="tagging", train=DATASETS / "conll2003/train.txt", dev=dev_file, max_train_examples=n))
    evaluation = {}
    for name in ("sst2", "agnews", "banking77"):
        rows = read_examples(DATASETS / CLASSIFICATION_SETS[name][1])
        evaluation[name] = ([r.text for r in rows][:eval_limit], [str(r.label) for r in rows][:eval_limit])
    test = read_conll(DATASETS / "conll2003/test.txt")[:eval_limit]
    evaluation["conll2003"] = ([s.words for s in test], [s.tags for s in test])
    return specs, evaluation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sharing", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="200 examples, 1 epoch, modes frozen:4, joint:4, joint-add:4, lora:4, no peers"
    )
    parser.add_argument("--train-examples", type=int, default=2000, help="per task; 0 = every training example")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--modes",
        type=checked_modes,
        default="frozen:2,frozen:4,joint:4,joint-add:4,lora:2",
        help='KIND:SPLIT, KIND one of frozen, joint, joint-add, lora; joint:4@2e-4 sets the trunk rate; "" = peers only',
    )
    parser.add_argument("--throughput-texts", type=int, default=600)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--peer-method", default="full", choices=["full", "full-bf16"], help="the Trainer's fp32 default, or bf16=True")
    parser.add_argument("--peer-tasks", default=",".join(METRIC), type=comma_list(str, METRIC), help="the tasks the peer fine-tunes")
    parser.add_argument(
        "--peer-learning-rates",
        default="5e-5",
        type=comma_list(float),
        help="several = the peer trains once per rate and keeps the best on validation data (every run is recorded)",
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--seeds",
        type=comma_list(int),
        default=None,
        help="run everything once per seed (variants tagged ', seed N'); the report shows each and the mean",
    )
    parser.add_argument("--output", default=None, help="results name (default sharing, or sharing_quick)")
    parser.add_argument(
        "--run-dir",
        type=str,
        default=None,
        help="keep joint-training checkpoints here and resume from them: a run stopped part-way (a time limit, a restart) "
        "continues from its last finished epoch when the same command is run again; results are written after every seed",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.epochs, args.no_peer, args.throughput_texts = 200, 1, True, 30
        args.modes = "frozen:4,joint:4,joint-add:4,lora:4"
    rec = Recorder("sharing", args.device)
    specs, evaluation = task_specs(args.train_examples or None, 1000 if not args.quick else 100, 100 if args.quick else None)
    for seed in args.seeds or [args.seed]:  # each seed draws its own subsample and validation cut, and trains with it
        args.seed = seed
        rec.variant_suffix = f", seed {seed}" if args.seeds else ""
        run_once(rec, args, specs, evaluation)
        if args.run_dir:  # what is finished survives a stop during the next seed
            rec.save(args.output or "sharing", vars(args))
    print(f"wrote {rec.save(args.output or ('sharing_quick' if args.quick else 'sharing'), vars(args))}")


def run_once(rec: Recorder, args: argparse.Namespace, specs: list[TaskSpec], evaluation: dict) -> None:
    """Every mode of ``--modes`` and the peers, for one seed."""
    datas = {s.name: load_task_data(s, head_type(s.type), args.seed) for s in specs}
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)
    pool = [evaluation[n][0][i] for i in range(args.throughput_texts // 3) for n in ("sst2", "agnews", "banking77")]
    for kind, split, trunk_rate in comma_list(sharing_mode)(args.modes):
        chain = Chain.from_backbone(BACKBONE, split=split).to(args.device)
        variant = {
            "frozen": f"frozen trunk, split={split}, full branches",
            "joint": f"joint trunk (MT), split={split}",
            "joint-add": f"joint trunk on 3 tasks, split={split}; sst2 added later",
            "lora": f"frozen trunk, split={split}, LoRA r=8 branches",
        }[kind]
        if trunk_rate is not None:
            variant += f", trunk lr {trunk_rate:g}"
        start = time.perf_counter()
        folder = f"{kind}-{split}" + (f"-{trunk_rate:g}" if trunk_rate is not None else "")
        run_dir = Path(args.run_dir) / f"seed{args.seed}" / folder if args.run_dir else None
        resumed = run_dir is not None and (run_dir / "joint").exists()
        if kind in ("joint", "joint-add"):
            first = specs if kind == "joint" else specs[1:]
            joint = JointConfig(epochs=args.epochs, **({"trunk_learning_rate": trunk_rate} if trunk_rate is not None else {}))
            fitted = chain.fit_joint(
                first, training, joint, data={s.name: datas[s.name] for s in first}, run_dir=run_dir, resume=resumed, progress=False
            )
            validation = {name: result.validation for name, result in fitted.items()}
            if kind == "joint-add":  # what add-task does: a new branch on the (now frozen) tuned trunk
                validation[specs[0].name] = chain.fit(specs[0], training, progress=False, data=datas[specs[0].name]).validation
        else:
            validation = {}
            for spec in specs:
                if kind == "lora":  # the LoRA mode's default learning rate (5e-4, larger than full layers' 1e-4) applies
                    spec = spec.model_copy(update={"branch": LoraOptions()})
                validation[spec.name] = chain.fit(spec, training, progress=False, data=datas[spec.name]).validation
        seconds = time.perf_counter() - start
        for name in METRIC:
            texts, labels = evaluation[name]
            value = chain.score(name, texts, labels)[METRIC[name]]
            described = chain.tasks[name].parameter_counts()
            rec.add(name, "finechain", variant, METRIC[name], value, "dev accuracy" if name == "sst2" else f"test {METRIC[name]}")
            if METRIC[name] in validation.get(name, {}):  # what a setting is chosen on (cut from train; CoNLL's dev file)
                rec.add(name, "finechain", variant, f"validation_{METRIC[name]}", validation[name][METRIC[name]], "validation")
            rec.add(name, "finechain", variant, "trainable_parameters", described["trainable_parameters"], "parameters")
            rec.add(name, "finechain", variant, "stored_parameters", described["stored_parameters"], "parameters")
        shared = sum(p.numel() for p in chain.model.trunk.stack.parameters()) if kind.startswith("joint") else 0
        rec.add("all four", "finechain", variant, "shared_stored_parameters", shared, "parameters")
        if resumed:  # the time spent before the stop is not known here
            print(f"{variant}: resumed from {run_dir}, so no train_seconds record")
        else:
            rec.add("all four", "finechain", variant, "train_seconds", seconds, "s")
        rec.add(
            "all four",
            "finechain",
            variant,
            "samples_per_second",
            len(pool) / timed(lambda chain=chain: chain.predict(pool), 3),
            "texts/s (4 tasks)",
        )
    if not args.no_peer:
        run_peers(rec, args, specs, datas, evaluation, pool)


def run_peers(rec: Recorder, args: argparse.Namespace, specs: list[TaskSpec], datas: dict, evaluation: dict, pool: list[str]) -> None:
    """Hugging Face Trainer full fine-tunes, one per task (the best of ``--peer-learning-rates`` on validation data),
    and the throughput of four separate fine-tuned models on the same texts."""
    backbone, _ = resolve_backbone(BACKBONE)
    tasks, rates = args.peer_tasks, args.peer_learning_rates
    total = 0.0
    for spec in (s for s in specs if s.name in tasks):
        data, metric = datas[spec.name], METRIC[spec.name]
        unit = "dev accuracy" if spec.name == "sst2" else f"test {metric}"
        sets = {"eval": evaluation[spec.name]}
        if len(rates) > 1:
            sets["validation"] = (data.validation.texts, data.validation.labels)
        peer_fn = hf_token_classification if spec.type == "tagging" else hf_sequence_classification
        runs = {}
        for rate in rates:
            run = {"epochs": args.epochs, "seed": args.seed, "device": args.device, "method": args.peer_method}
            runs[rate] = peer_fn(backbone, data.train, sets, data.labels, **run, learning_rate=rate)
            if len(rates) > 1:
                variant = f"full fine-tune, lr {rate:g}"
                rec.add(spec.name, "hf-trainer", variant, metric, runs[rate].scores["validation"], f"validation {metric}")
                rec.add(spec.name, "hf-trainer", variant, metric, runs[rate].scores["eval"], unit)
        best = max(rates, key=lambda r: runs[r].scores.get("validation", 0.0))
        total += runs[best].seconds
        rec.add(spec.name, "hf-trainer", "full fine-tune per task", metric, runs[best].scores["eval"], unit)
        rec.add(spec.name, "hf-trainer", "full fine-tune per task", "learning_rate", best, "chosen on validation")
        rec.add(spec.name, "hf-trainer", "full fine-tune per task", "trainable_parameters", runs[best].trainable_parameters, "parameters")
    if tasks != list(METRIC):
        return
    rec.add("all four", "hf-trainer", "full fine-tune per task", "train_seconds", total, "s")
    from benchmarks.infer import build_separate, run_separate

    tokenizer, models = build_separate(["sentiment", "topic", "intent", "entities"])
    seconds = timed(lambda: run_separate(tokenizer, models, pool), 3)
    rec.add("all four", "hf-separate", "four fine-tuned models", "samples_per_second", len(pool) / seconds, "texts/s (4 tasks)")


if __name__ == "__main__":
    main()
