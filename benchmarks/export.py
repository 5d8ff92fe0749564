"""Export and compression: the sharing benchmark's four-task chain (joint trunk, split 4) run by PyTorch (fp32 and the
machine's default precision), by ONNX Runtime from ``finechain export`` (fp32) and from ``finechain compress`` (int8,
fp16 or bf16 storage, int8 with either), and by OpenVINO (the fp32 export, which it computes in bf16 on CPUs with native bf16, and
``finechain compress --int8 --static``: int8 calibrated on 300 training texts by NNCF; ``--no-openvino`` leaves them out):
per task the metric, per variant the artifact size, CPU throughput at batch 1 and 32 and latency at batch 1.

    python -m benchmarks export [--quick] [--train-examples 2000] [--epochs 3] [--eval-limit 1000] [--students 3+1,2+1]

Students (``Chain.distil``, as ``finechain compress --trunk-layers``) are distilled from the chain over the same
training texts for as many epochs as the chain had, then run in PyTorch fp32 and as int8 exports. A student written
``3+1/0/1/0`` keeps a branch layer for SST-2 and Banking77 only (``--branch-layers 0,sst2=1,banking77=1``);
``3+1h1`` is distilled with hidden states too (``--hidden-weight 1``); ``3+1f0.75`` keeps three quarters of each
layer's feed-forward neurons (``--ffn-width 0.75``), ``3+1a10`` its 10 most used attention heads
(``--attention-heads 10``), ``3+1e6`` is distilled for 6 epochs; ``3+1u1000`` also over 1,000 unlabelled texts
from each task's training file (texts the chain did not train on, their labels dropped: ``finechain compress
--texts``), 4,000 in all, which every task's branch learns the teacher's answers on.

Metrics are on the first ``--eval-limit`` examples of the SST-2 dev and the AG News / Banking77 / CoNLL-2003 test
files (the same for every variant); speed on a fixed mix of 256 short and long texts, all four tasks per text, the best
of ``--rounds`` rounds in which every variant runs in turn (one round before 2026-12-03); each variant is also timed
against PyTorch fp32 and against the machine's default precision within each round (batch 32: the median and range of
the per-round ratios, since 2026-12-05), as the best rounds of two variants may come from different spells of the
machine. On a CPU without int8 dot-product instructions (VNNI or AMX), where ``runtime: auto`` runs the static int8
folder on ONNX Runtime instead of OpenVINO, that is timed too (since 2026-12-05).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks.common import BACKBONE, Recorder, scratch_folder
from benchmarks.sharing import METRIC, task_specs
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.prepare import TaskData, load_task_data, read_split
from finechain.export.half import store_half
from finechain.export.onnx import export_onnx
from finechain.export.quantize import quantize_int8
from finechain.export.static_int8 import CALIBRATION_TEXTS, quantize_static_int8
from finechain.heads import head_type
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain, read_export_manifest, resolve_runtime
from finechain.model.precision import resolve_precision
from finechain.spec import JointConfig

AUTO_STATIC = "ONNX Runtime static int8 (compress --int8 --static, runtime auto on a CPU without VNNI)"
STUDENT = re.compile(
    r"(\d+)\+(\d+(?:/\d+)*)(?:h(\d+(?:\.\d*)?))?(?:u(\d+))?(?:f((?:\d*\.\d+|1)(?:/(?:\d*\.\d+|1))*))?(?:a(\d+))?(?:e(\d+))?"
)


class Shape(NamedTuple):
    """A student of the benchmark: how it is cut from the chain and distilled."""

    trunk: int
    branch: int | dict[str, int]  # layers per branch, or per task
    hidden: float = 0.0  # hidden-state loss weight
    unlabelled: int = 0  # unlabelled texts per task
    ffn: float | None = None  # share of the feed-forward neurons kept
    epochs: int | None = None  # distillation epochs (None: the chain's)
    heads: int | None = None  # attention heads kept per layer (None: all)
    task_ffn: dict[str, float] | None = None  # per task, the share its branch keeps (None: the trunk's)


def student_shape(shape: str) -> Shape:
    """``"3+1"`` -> 3 trunk layers, 1 per branch, no hidden-state loss, no unlabelled texts, every feed-forward neuron;
    ``"3+1h1"``: hidden-state weight 1; ``"3+1h1u1000"``: and 1,000 unlabelled texts per task; ``"3+1/0/1/0"``: branch
    layers per task, in the order of the chain's tasks (SST-2, AG News, Banking77, CoNLL-2003); ``"3+1f0.75"``: each
    layer keeps three quarters of its feed-forward neurons (``finechain compress --ffn-width 0.75``); ``"3+1e6"``:
    distilled for 6 epochs (``--epochs 6``) instead of the chain's; ``"3+1a10"``: each layer keeps its 10 most used
    attention heads (``--attention-heads 10``); ``"3+1f0.875/0.875/0.5/0.5/0.75"``: the trunk keeps seven eighths of its
    neurons, each task's branch (in the order above) its own share (``--ffn-width 0.875,agnews=0.5,...``).

    Example:
        >>> tuple(student_shape("3+1")), tuple(student_shape("3+1h0.5")), tuple(student_shape("3+1u500f0.75e6"))
        ((3, 1, 0.0, 0, None, None, None, None), (3, 1, 0.5, 0, None, None, None, None), (3, 1, 0.0, 500, 0.75, 6, None, None))
        >>> student_shape("3+1/0/1/0u1000").branch
        {'sst2': 1, 'agnews': 0, 'banking77': 1, 'conll2003': 0}
        >>> student_shape("3+1f0.875a10e6").heads
        10
        >>> student_shape("3+1f0.875/0.875/0.5/0.5/0.75").task_ffn
        {'sst2': 0.875, 'agnews': 0.5, 'banking77': 0.5, 'conll2003': 0.75}
    """
    match = STUDENT.fullmatch(shape)
    if match is None:
        raise ValueError(f"{shape!r} is not TRUNK+BRANCH layers")
    trunk, branch, hidden, unlabelled, ffn, heads, epochs = match.groups()
    depths = [int(d) for d in branch.split("/")]
    if len(depths) not in (1, len(METRIC)):
        raise ValueError(f"{shape!r}: give one branch depth, or one per task ({'/'.join(METRIC)})")
    per_task = depths[0] if len(depths) == 1 else dict(zip(METRIC, depths, strict=True))
    shares = [] if ffn is None else [float(x) for x in ffn.split("/")]
    if len(shares) not in (0, 1, 1 + len(METRIC)):
        raise ValueError(f"{shape!r}: give one feed-forward share, or the trunk's and one per task ({'/'.join(METRIC)})")
    if any(not 0 < x <= 1 for x in shares):
        raise ValueError(f"{shape!r}: the feed-forward share must be above 0 and at most 1")
    share = shares[0] if shares else None
    task_ffn = dict(zip(METRIC, shares[1:], strict=True)) if len(shares) > 1 else None
    if heads is not None and int(heads) < 1:
        raise ValueError(f"{shape!r}: a student layer keeps at least 1 attention head")
    kept = None if heads is None else int(heads)
    passes = None if epochs is None else int(epochs)
    return Shape(int(trunk), per_task, float(hidden or 0), int(unlabelled or 0), share, passes, kept, task_ffn)


def student_name(shape: str) -> str:
    """The table's name for a student.

    Example:
        >>> student_name("3+1h1u1000")
        'student: 3-layer trunk, 1-layer branches, hidden states (weight 1), 1,000 unlabelled texts per task'
        >>> student_name("3+1/0/1/0")
        'student: 3-layer trunk, branches of 1/0/1/0 layers (SST-2/AG News/Banking77/CoNLL)'
        >>> student_name("3+1f0.75e6")
        'student: 3-layer trunk, 1-layer branches, 75% of the feed-forward neurons kept, 6 epochs'
        >>> student_name("3+1f0.875a10e6")
        'student: 3-layer trunk, 1-layer branches, 88% of the feed-forward neurons kept, 10 attention heads per layer, 6 epochs'
        >>> student_name("3+1f0.875/0.875/0.5/0.5/0.75e6")
        'student: 3-layer trunk, 1-layer branches, 88% of the feed-forward neurons kept (branches 88%/50%/50%/75%), 6 epochs'
    """
    s = student_shape(shape)
    if isinstance(s.branch, int):
        name = f"student: {s.trunk}-layer trunk, {s.branch}-layer branches"
    else:
        depths = "/".join(str(d) for d in s.branch.values())
        name = f"student: {s.trunk}-layer trunk, branches of {depths} layers (SST-2/AG News/Banking77/CoNLL)"
    name += f", hidden states (weight {s.hidden:g})" if s.hidden else ""
    name += f", {s.unlabelled:,} unlabelled texts per task" if s.unlabelled else ""
    name += f", {s.ffn:.0%} of the feed-forward neurons kept" if s.ffn is not None else ""
    name += f" (branches {'/'.join(f'{x:.0%}' for x in s.task_ffn.values())})" if s.task_ffn else ""
    name += f", {s.heads} attention heads per layer" if s.heads is not None else ""
    return name + (f", {s.epochs} epochs" if s.epochs is not None else "")


def unlabelled_texts(specs: list[TaskSpec], datas: dict[str, TaskData], per_task: int, seed: int) -> list[str]:
    """``per_task`` texts from each task's training file that the chain neither trained nor selected on, labels
    dropped (a tagging task's words joined by spaces): what a user would pass as ``finechain compress --texts``."""
    rng = random.Random(seed)
    texts: list[str] = []
    for spec in specs:
        data = datas[spec.name]
        seen = {_text(t) for t in [*data.train.texts, *data.validation.texts]}
        pool = sorted({_text(t) for t in read_split(spec.train, spec, head_type(spec.type)).texts} - seen)
        if len(pool) < per_task:
            raise ValueError(f"{spec.train}: only {len(pool)} texts the chain does not train on; ask for fewer unlabelled texts")
        texts += rng.sample(pool, per_task)
    return texts


def _text(text: str | list[str]) -> str:
    return text if isinstance(text, str) else " ".join(text)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def speed(engine: Engine, texts: list[str], batch: int) -> tuple[float, float]:
    """Texts per second at ``batch`` texts per call (all four tasks), and the median milliseconds per call."""
    engine.batch_size = batch
    engine.predict(texts[:batch])  # warm-up
    calls = []
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        begin = time.perf_counter()
        engine.predict(texts[i : i + batch])
        calls.append(time.perf_counter() - begin)
    return len(texts) / (time.perf_counter() - started), 1000 * statistics.median(calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks export", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="200 examples, 1 epoch, 50 evaluation examples, 64 speed texts, 30 calibration texts"
    )
    parser.add_argument("--train-examples", type=int, default=2000, help="per task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-limit", type=int, default=1000, help="evaluation examples per task")
    parser.add_argument("--speed-texts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--students", default="3+1,2+1", help="students to distil: trunk+branch layers, comma-separated ('' for none)")
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds, every variant in turn each round; the best counts")
    parser.add_argument("--keep", action="store_true", help="keep the folders written (default: removed at the end)")
    parser.add_argument("--no-openvino", action="store_true", help="no OpenVINO variants (the fp32 export run by OpenVINO, static int8)")
    parser.add_argument("--output", default=None, help="results name (default export, or export_quick)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        args.train_examples, args.epochs, args.eval_limit, args.speed_texts, args.rounds = 200, 1, 50, 64, 1
        args.students = "3+1" if args.students == parser.get_default("students") else args.students
    calibration = 30 if args.quick else CALIBRATION_TEXTS  # static int8's sample: most of a smoke run's time at the default
    # each student's (trunk layers, branch layers, hidden weight, unlabelled texts per task), read before the chain trains
    shapes: dict[str, Shape] = {}
    for shape in filter(None, args.students.split(",")):
        try:
            shapes[shape] = student_shape(shape)
        except ValueError as error:
            parser.error(
                f"--students: {error} (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch "
                "layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10 "
                "attention heads per layer)"
            )
    rec = Recorder("export", "cpu")
    specs, evaluation = task_specs(args.train_examples, 100 if args.quick else 1000, args.eval_limit)
    datas = {s.name: load_task_data(s, head_type(s.type), args.seed) for s in specs}
    extras = {}  # before the chain trains: too few texts is a usage error, not an hour lost
    for shape, cut in shapes.items():
        try:
            extras[shape] = unlabelled_texts(specs, datas, cut.unlabelled, args.seed) if cut.unlabelled else []
        except ValueError as error:
            parser.error(f"--students {shape}: {error}")
    work = scratch_folder("finechain-export-bench-", keep=args.keep)
    chain = Chain.from_backbone(BACKBONE, split=4)
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)
    chain.fit_joint(specs, training, JointConfig(epochs=args.epochs), data=datas, progress=False)
    chain.save_pretrained(work / "chain", copy_backbone=True)
    export_onnx(chain, work / "onnx")
    quantize_int8(work / "onnx", work / "int8")
    store_half(work / "onnx", work / "half")
    store_half(work / "int8", work / "int8-half")
    store_half(work / "onnx", work / "bf16", "bf16")
    store_half(work / "int8", work / "int8-bf16", "bf16")
    openvino = not args.no_openvino
    if openvino:  # calibrated on the tasks' training files, as compress --int8 --static does by default
        quantize_static_int8(work / "onnx", work / "static", count=calibration)
    students = {}
    for shape, cut in shapes.items():
        started = time.perf_counter()
        student = chain.distil(
            cut.trunk,
            cut.branch if isinstance(cut.branch, int) else 0,
            task_branch_layers=cut.branch if isinstance(cut.branch, dict) else None,
            texts=extras[shape],
            data=datas,
            training=training,
            epochs=cut.epochs or args.epochs,
            hidden_weight=cut.hidden,
            ffn_width=cut.ffn,
            attention_heads=cut.heads,
            task_ffn_width=cut.task_ffn,
            progress=False,
        )
        seconds = time.perf_counter() - started
        folder = work / f"student-{shape}"
        student.save_pretrained(folder)
        quantize_int8(folder, work / f"student-{shape}-int8")
        if openvino:
            quantize_static_int8(folder, work / f"student-{shape}-static", count=calibration)
        students[shape] = (student, folder, seconds)
        print(f"student {shape}: distilled in {seconds:.0f} s", flush=True)
    pool = [
        t
        for i in range(args.speed_texts // 3 + 1)
        for t in (evaluation[n][0][i % len(evaluation[n][0])] for n in ("sst2", "agnews", "banking77"))
    ]
    pool = pool[: args.speed_texts]
    fp32, default = "PyTorch fp32", f"PyTorch, the machine's default ({resolve_precision('cpu', 'auto')})"
    variants = {
        fp32: (Engine(chain.model, precision="fp32"), folder_mb(work / "chain")),
        default: (Engine(chain.model, precision="auto"), folder_mb(work / "chain")),
        "ONNX Runtime fp32 (finechain export)": (Engine(ExportedChain(work / "onnx")), folder_mb(work / "onnx")),
        "ONNX Runtime int8 (finechain compress --int8)": (Engine(ExportedChain(work / "int8")), folder_mb(work / "int8")),
        "ONNX Runtime fp32, fp16 storage (finechain compress --fp16)": (Engine(ExportedChain(work / "half")), folder_mb(work / "half")),
        "ONNX Runtime int8, fp16 storage (compress --int8 --fp16)": (
            Engine(ExportedChain(work / "int8-half")),
            folder_mb(work / "int8-half"),
        ),
        "ONNX Runtime fp32, bf16 storage (finechain compress --bf16)": (Engine(ExportedChain(work / "bf16")), folder_mb(work / "bf16")),
        "ONNX Runtime int8, bf16 storage (compress --int8 --bf16)": (
            Engine(ExportedChain(work / "int8-bf16")),
            folder_mb(work / "int8-bf16"),
        ),
    }
    if openvino:
        variants["OpenVINO, the fp32 export (finechain predict --runtime openvino)"] = (
            Engine(ExportedChain(work / "onnx", runtime="openvino")),
            folder_mb(work / "onnx"),
        )
        static = work / "static"
        variants["OpenVINO static int8 (compress --int8 --static)"] = (Engine(ExportedChain(static, runtime="openvino")), folder_mb(static))
        if resolve_runtime("auto", read_export_manifest(static)) != "openvino":  # no VNNI or AMX: what runtime auto runs instead
            variants[AUTO_STATIC] = (Engine(ExportedChain(static)), folder_mb(static))
    for shape, (student, folder, seconds) in students.items():
        name = student_name(shape)
        variants[f"{name}, PyTorch fp32"] = (Engine(student.model, precision="fp32"), folder_mb(folder))
        int8_folder = Path(f"{folder}-int8")
        variants[f"{name}, ONNX Runtime int8"] = (Engine(ExportedChain(int8_folder)), folder_mb(int8_folder))
        if openvino:
            static_folder = Path(f"{folder}-static")
            variants[f"{name}, OpenVINO static int8"] = (Engine(ExportedChain(static_folder, runtime="openvino")), folder_mb(static_folder))
        rec.add("all four", "finechain", f"{name}, PyTorch fp32", "train_seconds", seconds, "s to distil (all four tasks)")
    for variant, (engine, size) in variants.items():
        for name in METRIC:
            texts, labels = evaluation[name]
            value = engine.score(name, texts, labels)[METRIC[name]]
            unit = "dev accuracy" if name == "sst2" else f"test {METRIC[name]}"
            rec.add(name, "finechain", variant, METRIC[name], value, f"{unit}, first {len(texts)}")
        rec.add("all four", "finechain", variant, "artifact_mb", size, "MB (backbone included)")
        print(f"{variant}: scored", flush=True)
    rounds: dict[tuple[str, int], list[tuple[float, float]]] = {}  # each variant's (texts/s, ms per call) in every round
    for _ in range(args.rounds):  # variants in turn each round, so that a slow spell of the machine hits them all
        for variant, (engine, _size) in variants.items():
            for batch in (1, 32):
                rounds.setdefault((variant, batch), []).append(speed(engine, pool, batch))
    for (variant, batch), runs in rounds.items():  # each variant's best round: a shared CPU only ever slows
        rate, ms = max(runs, key=lambda run: run[0])
        rec.add("all four", "finechain", f"{variant}, batch {batch}", "samples_per_second", rate, "texts/s (4 tasks)")
        rec.add("all four", "finechain", f"{variant}, batch {batch}", "p50_ms", ms, "ms per call")
    for variant in variants:  # each variant against both PyTorch rows within each round (best rounds may come from different spells)
        for reference, called in ((fp32, "PyTorch fp32"), (default, "the default")):
            if variant != reference:
                ratios = [a / b for (a, _), (b, _) in zip(rounds[variant, 32], rounds[reference, 32], strict=True)]
                unit = f"x {reference} within a round: median of {len(ratios)} ({min(ratios):.3f}-{max(ratios):.3f})"
                rec.add("all four", "finechain", f"{variant}, batch 32, paired with {called}", "speedup", statistics.median(ratios), unit)
    print(f"wrote {rec.save(args.output or ('export_quick' if args.quick else 'export'), vars(args))}")
    if args.keep:
        print(f"kept the chain and its exports in {work}")


if __name__ == "__main__":
    main()
