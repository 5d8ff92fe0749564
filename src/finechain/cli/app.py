"""The ``finechain`` command line: train, check, tune, add-task, eval, predict, serve, export, compress, info, demo."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar, get_args

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from finechain.errors import NOTHING_TO_RESUME, FinechainError, Interrupted, ResourceError, saying_on_interrupt
from finechain.progress import tagged
from finechain.spec import load_chain_spec, load_task_specs

Number = TypeVar("Number", int, float)  # an option value per task (per_task_values)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tuning chains: one shared trunk, many task tails.")
# markup off: paths, data and messages print as written (a `[word ...]` in them is text, not a style); styled bits are Text
# soft wrap: a line longer than the terminal is left to it (a path or a command to copy stays whole, logs keep lines)
out = Console(markup=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
RUNTIME_HELP = "an exported folder's runtime: auto (what its graphs were made for, if it runs well on this CPU), onnxruntime or openvino"

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="folder for the trained chain")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue an interrupted run from its last checkpoint")]
PREDICT_CHUNK = 4096  # texts per chunk of `predict`: written (and counted on the progress bar) as each chunk is done
PREDICT_CHUNK_CHARS = 1 << 20  # and characters: a chunk of long texts' answers (a tag per word) stays small too

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _metrics_table(title: str, rows: list[tuple[str, str, dict[str, Any]]]) -> Table | Text:
    if not any(isinstance(value, float) for _, _, scores in rows for value in scores.values()):  # no dev, no cut, no test
        return Text(f"{title} (no validation or test data to score)")
    table = Table(title=title)
    for column in ("task", "split", "metric", "value"):
        table.add_column(column)
    for task, split, scores in rows:
        for name, value in scores.items():
            if isinstance(value, float):
                table.add_row(task, split, name, f"{value:.4f}")
    return table


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="chain spec YAML", metavar="SPEC")],
    out_dir: OutOpt,
    resume: ResumeOpt = False,
    copy_backbone: Annotated[bool, typer.Option("--copy-backbone", help="store the backbone weights inside the chain folder")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train every task of SPEC on one shared trunk and save the chain to --out."""
    from finechain.jobs.checking import check_out_folder, check_spec

    checked = check_spec(spec)  # the spec, its data, backbone, split and device: a problem fails before the model stack loads
    check_out_folder(out_dir, resume)
    from finechain.jobs.training import train_chain

    rows = train_chain(spec, out_dir, resume=resume, copy_backbone=copy_backbone, progress=not quiet, console=err, checked=checked)
    out.print(_metrics_table(f"chain saved to {out_dir!s}", rows))


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="chain spec YAML", metavar="SPEC")],
    strict: Annotated[bool, typer.Option("--strict", help="exit 1 when there are warnings (for CI)")] = False,
) -> None:
    """Validate SPEC and all its data like `train` would, then report sizes, labels, lengths and warnings (no training)."""
    load_chain_spec(spec)  # a bad spec fails in a moment, before the model stack is imported
    from finechain.jobs.checking import check_chain

    reports, flows = check_chain(spec)
    table = Table(title=f"{spec!s}: data is valid", box=None)
    for column in ("task", "type", "train", "val", "test", "labels", "majority", "too long"):
        table.add_column(column, justify="left" if column in ("task", "type") else "right")
    for r in reports:
        table.add_row(
            r.task,
            r.type,
            str(r.rows["train"]),
            f"{r.rows['validation']}{'*' if r.validation_source == 'cut from train' else ''}",
            str(r.rows.get("test", "-")),
            str(r.labels or "-"),
            f"{r.majority:.0%}" if r.majority is not None else "-",
            f"{max(r.over_length.values()):.1%}",
        )
    out.print(table)
    out.print(
        "val*: cut from train. majority: accuracy of always guessing the commonest validation label. "
        "too long: share of texts over max_length tokens (the most of any split)."
    )
    _print_flows([flow.model_dump(mode="json") for flow in flows])
    warnings = [(r.task, w) for r in reports for w in r.warnings]
    for task, warning in warnings:
        out.print(tagged("warning", "yellow", f"{task}: {warning}"))
    if not warnings:
        out.print("no warnings")
    if strict and warnings:
        raise SystemExit(1)


@app.command()
def tune(
    spec: Annotated[Path, typer.Argument(help="chain spec YAML", metavar="SPEC")],
    trials: Annotated[int | None, typer.Option("--trials", "-n", min=1, help="trials to run (default 20 without --budget)")] = None,
    budget: Annotated[str | None, typer.Option("--budget", help="time for the search, e.g. 15m (a started trial finishes)")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="where to write the best spec (default SPEC.tuned.yaml)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="the sampler's seed (default: training.seed)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Search SPEC's settings (split, learning rate, epochs, batch size, branch mode and LoRA rank, pooling, class
    weights) with Optuna on validation data; write the best as a spec and every trial as JSON beside it."""
    load_chain_spec(spec)  # a bad spec fails in a moment, before the model stack is imported
    from finechain.jobs.tuning import parse_budget, tune_spec

    seconds = parse_budget(budget) if budget is not None else None

    def settings(params: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

    def show(record: Any) -> None:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in record.scores.items())
        err.print(f"trial {record.number}: {record.state}, {scores or '-'} ({record.seconds:.0f} s) {settings(record.params)}")

    result = tune_spec(spec, trials=trials, budget_seconds=seconds, out=out_file, seed=seed, progress=not quiet, on_trial=show)
    table = Table(title=f"{len(result.trials)} trials; best: trial {result.best.number}, written to {result.spec_path!s}")
    names = list(result.metrics)
    for column in ("trial", "state", *(f"{n} {result.metrics[n]}" for n in names), "seconds", "settings"):
        table.add_column(column)
    for record in result.trials:
        marker = " *" if record is result.best else ""
        scores = [f"{record.scores[n]:.4f}" if n in record.scores else "-" for n in names]
        table.add_row(f"{record.number}{marker}", record.state, *scores, f"{record.seconds:.0f}", settings(record.params))
    out.print(table)
    out.print(f"trials: {result.trials_path!s}; train the best with: finechain train {result.spec_path!s} --out DIR")


@app.command("add-task")
def add_task(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    task_file: Annotated[Path, typer.Argument(help="YAML with one task (or tasks: [...])", metavar="TASK_FILE")],
    replace: Annotated[bool, typer.Option("--replace", help="retrain a task that already exists")] = False,
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train new task(s) on an existing chain; the other tasks are not touched."""
    from finechain.jobs.checking import check_new_tasks

    specs = load_task_specs(task_file)  # a bad task file, or a task the chain has, fails before the model stack is imported
    check_new_tasks(chain_dir, specs, task_file, replace)
    from finechain.jobs.training import add_tasks

    rows = add_tasks(chain_dir, task_file, replace=replace, resume=resume, progress=not quiet, console=err)
    out.print(_metrics_table(f"added to {chain_dir!s}", rows))


@app.command()
def update(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    task: Annotated[str, typer.Option("--task", "-t", help="the task to continue")],
    data: Annotated[Path, typer.Option("--data", "-d", help="new labelled file (same columns as the task's); new labels allowed")],
    dev: Annotated[Path | None, typer.Option("--dev", help="new validation file (default: cut from --data)")] = None,
    test: Annotated[Path | None, typer.Option("--test", help="new test file, scored before and after")] = None,
    old_data: Annotated[
        Path | None, typer.Option("--old-data", help="the earlier training data, when the files the task records are gone")
    ] = None,
    rehearsal: Annotated[float, typer.Option(min=0, help="earlier training examples mixed in per new example")] = 1.0,
    max_forgetting: Annotated[
        float, typer.Option(min=0, help="refuse the update if the old test score falls by more than this many points")
    ] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="keep the update even if it forgets more")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted update (the same files and options)")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Continue TASK on new data, rehearsing earlier data; the old test set is scored before and after, and the
    previous version is kept (finechain restore brings it back)."""
    from finechain.model.manifest import require_task

    require_task(chain_dir, task)  # a wrong folder or task name fails in a moment, before the model stack is imported
    from finechain.jobs.updating import update_task

    report = update_task(
        chain_dir,
        task,
        data,
        dev=dev,
        test=test,
        old_data=old_data,
        rehearsal=rehearsal,
        max_forgetting=max_forgetting,
        force=force,
        resume=resume,
        progress=not quiet,
        console=err,
    )
    table = Table(title=f"{task}: {report.metric} before and after the update ({report.rehearsed} earlier examples rehearsed)")
    for column in ("data", "before", "after"):
        table.add_column(column)
    for key, values in report.scores.items():
        table.add_row(key, *(f"{v:.4f}" if v is not None else "-" for v in (values["before"], values["after"])))
    out.print(table)
    if report.new_labels:
        out.print(f"new labels: {', '.join(report.new_labels)}")
        _say_unlisted(chain_dir, task, report.new_labels)
    if not report.accepted:
        raise FinechainError(report.note, file=chain_dir, fix="raise --rehearsal, or pass --force to keep it anyway")
    if report.best_epoch == 0:
        out.print("the task as it was scored best on the validation data (new and earlier examples): its weights are unchanged")
    out.print(f"updated; the previous version is kept as version {report.kept_version} (finechain restore {chain_dir!s} -t {task})")


def _say_unlisted(chain_dir: Path, task: str, new_labels: list[str]) -> None:
    """Warn of the flow stages of ``task`` whose ``allow`` lists none of its new labels: they rule them out."""
    from finechain.heads import head_type
    from finechain.model.manifest import read_manifest
    from finechain.spec.flows import FlowSpec, unlisted_by_allow

    manifest = read_manifest(chain_dir)
    names = head_type(manifest.tasks[task].head.type).allow_names(new_labels)
    flows = [FlowSpec.model_validate(flow) for flow in manifest.flows]
    for flow, stage, missing in unlisted_by_allow(flows, task, names):
        message = (
            f"flow '{flow}': stage '{stage}' answers only what its 'allow' lists for each upstream label, and no list holds "
            f"{', '.join(missing)}: it never answers them after a listed label; to allow them, add them to its 'allow' "
            "and replace the flow (finechain add-flow CHAIN FLOW_FILE --replace)"
        )
        err.print(tagged("warning", "yellow", message))


@app.command()
def restore(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    task: Annotated[str, typer.Option("--task", "-t", help="the task to restore")],
    version: Annotated[int | None, typer.Option("--version", help="the kept version (default: the latest)")] = None,
) -> None:
    """Bring back a version of TASK kept by finechain update (the current one is kept too)."""
    from finechain.model.manifest import require_task

    require_task(chain_dir, task)  # a wrong folder or task name fails in a moment, before the model stack is imported
    from finechain.jobs.updating import restore_task

    restored = restore_task(chain_dir, task, version)
    out.print(f"{task}: version {restored} restored")


@app.command("remove-task")
def remove_task(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    task: Annotated[str, typer.Option("--task", "-t", help="the task to remove")],
    with_flows: Annotated[bool, typer.Option("--with-flows", help="also remove the chain's flows that run the task")] = False,
) -> None:
    """Remove TASK from a chain, with its files and kept versions; the other tasks are not touched."""
    from finechain.model.manifest import require_task

    require_task(chain_dir, task)  # a wrong folder or task name fails in a moment, before the model stack is imported
    from finechain.jobs.updating import remove_task as remove

    flows = remove(chain_dir, task, with_flows)
    also = f" and the flow(s) that ran it: {', '.join(flows)}" if flows else ""
    out.print(f"{task}: removed from {chain_dir!s}{also}")


@app.command("add-flow")
def add_flow(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    flow_file: Annotated[Path, typer.Argument(help="YAML with one flow (or flows: [...]), as a spec's flows: block", metavar="FLOW_FILE")],
    replace: Annotated[bool, typer.Option("--replace", help="replace a flow of the same name")] = False,
) -> None:
    """Add flow(s) of the chain's tasks (and other chains') to a trained chain; no task is touched."""
    from finechain.jobs.updating import add_flows
    from finechain.model.manifest import read_manifest
    from finechain.spec.flows import FlowSpec, describe_flow

    names = add_flows(chain_dir, flow_file, replace)
    flows = {flow["name"]: flow for flow in read_manifest(chain_dir).flows}
    for name in names:
        out.print(Text(f"added to {chain_dir!s}: " + describe_flow(FlowSpec.model_validate(flows[name]))))


@app.command("remove-flow")
def remove_flow(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    name: Annotated[str, typer.Argument(help="the flow to remove", metavar="NAME")],
) -> None:
    """Remove flow NAME from a chain; its tasks stay."""
    from finechain.model.manifest import read_manifest

    known = [flow["name"] for flow in read_manifest(chain_dir).flows]
    if name not in known:  # fails in a moment, before the model stack is imported
        raise FinechainError(f"unknown flow '{name}'", file=chain_dir, fix=f"this chain's flows: {sorted(known) or 'none'}")
    from finechain.jobs.updating import remove_flow as remove

    remove(chain_dir, name)
    out.print(f"flow {name}: removed from {chain_dir!s}")


@app.command("eval")
def evaluate(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    data: Annotated[Path, typer.Option("--data", "-d", help="labelled CSV/TSV/JSONL file")],
    task: Annotated[str | None, typer.Option("--task", "-t", help="task to evaluate")] = None,
    flow: Annotated[str | None, typer.Option("--flow", help="evaluate this flow end to end instead (per stage + exact match)")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="where to write the report (default CHAIN/reports/TASK)")] = None,
    runtime: Annotated[str, typer.Option(help=RUNTIME_HELP)] = "auto",
) -> None:
    """Score TASK on a labelled file and write JSON/Markdown/PNG reports; or a whole flow (--flow): each stage on the
    texts that reached it, and the share of texts where every stage was right."""
    from finechain.jobs.evaluation import evaluate_file, evaluate_flow

    _check_folder_options(chain_dir, runtime)
    if (task is None) == (flow is None):
        raise FinechainError("give --task or --flow", fix="e.g. --task intent, or --flow assistant")
    if flow is not None:
        scores = evaluate_flow(chain_dir, flow, data, runtime=runtime)
        rows = [(name, data.name, stage) for name, stage in scores["stages"].items()]
        rows.append(("end to end", data.name, {"exact_match": scores["exact_match"], "n": scores["n"]}))
        out.print(_metrics_table(f"flow {flow} on {data!s}", rows))
        return
    assert task is not None

    scores, paths = evaluate_file(chain_dir, task, data, report_dir, runtime=runtime)
    out.print(_metrics_table(f"{task} on {data!s}", [(task, data.name, scores)]))
    for path in paths:
        out.print(f"report: {path}")


@app.command()
def predict(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="task(s) to run; default all")] = None,
    flow: Annotated[str | None, typer.Option("--flow", help="run this flow of the chain instead (one record per text)")] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="texts: .txt (a line each), .csv/.tsv (text column), .jsonl (text field: a string or a word list), "
            ".conll (word per line); or stdin",
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="JSONL output file (default stdout)")] = None,
    text_column: Annotated[str, typer.Option(help="the text field of a .jsonl/.csv/.tsv --input")] = "text",
    batch_size: Annotated[int, typer.Option(help="texts per trunk pass", min=1)] = 64,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1, ...")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch (default: one per core)", min=1)] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on GPUs and on CPUs with native bf16, else fp32), fp32, bf16 or fp16")
    ] = "auto",
    runtime: Annotated[str, typer.Option(help=RUNTIME_HELP)] = "auto",
) -> None:
    """Predict all (or --task) tasks for each input text in one trunk pass; writes JSONL. CHAIN_DIR may also be an
    exported folder (finechain export / compress): it then runs with ONNX Runtime (or OpenVINO), without PyTorch."""
    from finechain.data.conll import CONLL_SUFFIXES, read_word_lists
    from finechain.data.inputs import size_blocks
    from finechain.data.readers import read_texts
    from finechain.io import atomic_write, decode_utf8, os_error
    from finechain.progress import TrainProgress
    from finechain.spec import Precision

    choices = get_args(Precision)
    if precision not in choices:
        raise FinechainError(f"unknown precision '{precision}'", fix=f"use one of {', '.join(choices)}")
    exported = _check_folder_options(chain_dir, runtime, device, precision)
    if flow is not None and task:
        raise FinechainError("--flow runs every task its stages name", fix="drop --task, or drop --flow")
    if output is not None and output.is_dir():  # before any work, not after it
        raise FinechainError("cannot write: it is a folder, not a file", file=output, fix="give a file path")
    if not exported:  # the manifest first: a damaged folder or an unknown --task fails before PyTorch loads
        from finechain.data.inputs import select_tasks
        from finechain.model.manifest import read_manifest

        manifest = read_manifest(chain_dir)
        if task:
            select_tasks(manifest.tasks, task)
        if device not in ("auto", "cpu"):  # a bad --device fails here, before any input is read
            from finechain.model.device import pick_device

            pick_device(device)
    presplit = input_file is not None and input_file.suffix.lower() in CONLL_SUFFIXES  # pre-tokenised: one word per line
    if input_file is None:  # as bytes where there are bytes: a bad byte is a one-line error with its line, not a traceback
        raw = getattr(sys.stdin, "buffer", None)
        text = decode_utf8(raw.read(), "<stdin>") if raw is not None else sys.stdin.read()
        texts: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        texts = read_word_lists(input_file) if presplit else read_texts(input_file, text_column)
    if not texts:
        err.print(f"no texts in {input_file or 'the input'}: nothing to predict")
    key = "words" if texts and isinstance(texts[0], list) else "text"
    if flow is not None:
        from finechain.flows.flow import saved_flow

        engine, flows = _engine(chain_dir, exported, device, precision, batch_size, threads, runtime)
        runner = saved_flow(flow, flows, engine, chain_dir, _stage_engine)  # an unknown flow fails before any work

        def lines(part: list[Any]) -> list[str]:
            return [json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in runner.run(part)]

    elif not texts and not exported:  # its tasks are checked already: no model to load for no answers

        def lines(part: list[Any]) -> list[str]:
            return []

    else:
        engine, _ = _engine(chain_dir, exported, device, precision, batch_size, threads, runtime)
        tasks = engine.model.task_names(task)  # an unknown --task fails before any work
        if not tasks:  # e.g. an export of the backbone's sentence embeddings alone
            raise FinechainError(f"{chain_dir} has no tasks to predict", fix="train a task into it first, or embed with Engine.embed")

        def lines(part: list[Any]) -> list[str]:
            return [
                json.dumps({key: t, **{name: answer.to_dict() for name, answer in p.items()}}, ensure_ascii=False) + "\n"
                for t, p in zip(part, engine.predict(part, tasks), strict=True)
            ]

    def write_all(handle: TextIO) -> None:  # chunk by chunk: memory stays flat, output flows, progress shows
        chunks = size_blocks(texts, PREDICT_CHUNK_CHARS, PREDICT_CHUNK)
        with TrainProgress("predict", total=len(texts), enabled=len(chunks) > 1, unit="texts", show_loss=False) as bar:
            for chunk in chunks:
                part = texts[chunk]
                handle.write("".join(lines(part)))
                handle.flush()
                bar.advance(len(part))

    if output:  # written to a temporary file, renamed when complete
        atomic_write(output, lambda tmp: _with_open(tmp, write_all))
        err.print(f"wrote {len(texts)} predictions to {output}")
    else:
        try:
            write_all(sys.stdout)
        except OSError as error:  # a full disk or a closed pipe behind stdout
            raise os_error(error, "<stdout>") from None


def _engine(
    chain_dir: Path, exported: bool, device: str, precision: str, batch_size: int, threads: int | None, runtime: str = "auto"
) -> tuple[Any, dict[str, Any]]:
    """The inference engine over a chain folder (PyTorch) or an exported one (ONNX Runtime or OpenVINO, no PyTorch
    imported), with ``threads`` CPU threads, and the chain's flows by name."""
    from finechain.inference import Engine

    if exported:
        from finechain.inference.exported import ExportedChain

        model = ExportedChain(chain_dir, threads=threads, runtime=runtime)
        return Engine(model, precision, batch_size), model.flows
    import torch

    from finechain import Chain

    if threads:
        torch.set_num_threads(threads)
    chain = Chain.from_pretrained(chain_dir, device=device)
    return Engine(chain.model, precision, batch_size), chain.flows


def _check_folder_options(chain_dir: Path, runtime: str = "auto", device: str = "auto", precision: str = "auto") -> bool:
    """Whether ``chain_dir`` is an exported folder. A bad ``--runtime`` fails before any work, and so does an option
    the folder's kind does not take: ``--runtime`` onnxruntime or openvino on a PyTorch chain; a ``--device`` other
    than the CPU, or a ``--precision``, on an exported folder (it runs on the CPU, in the precision it was exported or
    compressed with). A folder that is neither is left to the loading that follows (it says what is missing)."""
    from finechain.inference.exported import check_precision, check_runtime, is_exported, read_export_manifest
    from finechain.model.manifest import MANIFEST

    check_runtime(runtime, field="--runtime")
    exported = is_exported(chain_dir)
    if exported:
        if device not in ("auto", "cpu"):
            raise FinechainError(
                f"--device {device}: an exported folder runs on the CPU", file=chain_dir, fix="drop --device, or use the chain's own folder"
            )
        check_precision(precision, read_export_manifest(chain_dir), field="--precision", file=chain_dir)
    elif runtime != "auto" and (chain_dir / MANIFEST).is_file():
        raise FinechainError(
            f"--runtime {runtime} runs an exported folder, and this is a PyTorch chain",
            file=chain_dir,
            fix=f"drop --runtime, or export the chain first: finechain export {chain_dir} --out OUT",
        )
    return exported


def _stage_engine(folder: Path) -> Any:
    """The engine of another chain a flow stage names: an exported folder needs no PyTorch, a chain folder does."""
    from finechain.inference.exported import is_exported

    if is_exported(folder):
        from finechain.inference import Engine
        from finechain.inference.exported import ExportedChain

        return Engine(ExportedChain(folder))
    from finechain.chain import open_engine

    return open_engine(folder)


def _with_open(path: Path, write: Callable[[TextIO], None]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        write(handle)


@app.command()
def serve(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST port (0: any free port)")] = 8000,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="also serve gRPC on this port")] = None,
    workers: Annotated[int, typer.Option(help="server processes, each with its own copy of the chain and batcher")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="most token rows (texts, long-text windows) per forward pass")] = 64,
    max_batch_tokens: Annotated[int, typer.Option(help="most tokens per forward pass")] = 16384,
    max_wait_ms: Annotated[float, typer.Option(help="how long a lone request waits for others to share its pass")] = 5.0,
    queue_size: Annotated[int, typer.Option(help="requests waiting at most; more get 429 with Retry-After")] = 1024,
    timeout_ms: Annotated[float, typer.Option(help="default deadline of a request")] = 30_000,
    max_texts: Annotated[int, typer.Option(help="texts per request at most")] = 256,
    max_chars: Annotated[int, typer.Option(help="characters per text at most")] = 20_000,
    max_body_bytes: Annotated[int, typer.Option(help="request body size at most")] = 4 * 1024 * 1024,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="file holding the API key that /v1 and /metrics require (or set FINECHAIN_API_KEY)"),
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="an origin a browser page may call from (repeat; * for any)")
    ] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1, ...")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads of each process's model (default: the cores shared out among the workers)")
    ] = None,
    reload_check_s: Annotated[float, typer.Option(help="how often to look for a new version of the chain folder (0: never)")] = 2.0,
    runtime: Annotated[str, typer.Option(help=RUNTIME_HELP)] = "auto",
    no_access_log: Annotated[bool, typer.Option("--no-access-log", help="no JSON line per request")] = False,
) -> None:
    """Serve a chain over REST (and gRPC), batching texts from many clients into shared passes; a page to try it at /."""
    import os

    from pydantic import ValidationError

    from finechain.io import read_text_file
    from finechain.serve.server import serve as run
    from finechain.serve.settings import ServeSettings

    key = read_text_file(api_key_file).strip() if api_key_file else os.environ.get("FINECHAIN_API_KEY") or None
    options = dict(
        chain=chain_dir, host=host, port=port, grpc_port=grpc_port, workers=workers, max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, queue_size=queue_size, timeout_ms=timeout_ms,
        max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes, api_key=key, cors_origins=cors_origin or [],
        precision=precision, device=device, threads=threads, reload_check_s=reload_check_s, access_log=not no_access_log,
        runtime=runtime,
    )  # fmt: skip
    try:
        settings = ServeSettings(**options)
    except ValidationError as error:
        first = error.errors()[0]
        name = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "options"
        if name in ("--api-key", "--cors-origins"):
            name = {"--api-key": "the API key", "--cors-origins": "--cors-origin"}[name]
        raise FinechainError(f"{name}: {first['msg']}", fix="see finechain serve --help") from None
    _check_folder_options(chain_dir, runtime, device, precision)
    try:
        run(settings)
    except Interrupted as stop:  # the server finished the requests it had: a clean stop
        err.print(f"stopped by {stop.signal_name}: the requests in flight were answered")


@app.command()
def export(
    chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="the folder to write (must not exist, unless --overwrite)")],
    export_format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="task(s) to export; default all")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out folder")] = False,
    tolerance: Annotated[float, typer.Option(help="largest difference to PyTorch's outputs accepted", min=0)] = 1e-3,
    per_task_graphs: Annotated[
        bool, typer.Option("--per-task-graphs", help="a trunk graph and one graph per task (each replaceable alone) instead of one graph")
    ] = False,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="also the backbone's sentence embeddings (embeddings.onnx; a chain with a frozen trunk)")
    ] = False,
) -> None:
    """Export the chain (trunk once, every branch and head) as one ONNX graph with its tokenizer and a manifest: the
    folder runs with ONNX Runtime, tokenizers and NumPy alone (predict, eval and serve read it too)."""
    if export_format != "onnx":
        raise FinechainError(f"unknown export format '{export_format}'", fix="use --format onnx")
    from finechain.export.onnx import export_onnx

    options = {"tolerance": tolerance, "overwrite": overwrite, "per_task": per_task_graphs, "embeddings": embeddings}
    manifest = export_onnx(chain_dir, out_dir, task, **options)
    table = Table(title=f"exported to {out_dir!s} (ONNX)", box=None)
    for column in ("task", "type", "output", "largest difference to PyTorch"):
        table.add_column(column)
    for name, entry in manifest.tasks.items():
        table.add_row(name, entry.type, entry.output, f"{entry.max_abs_diff:.2g}")
    if manifest.embeddings_max_abs_diff is not None:
        table.add_row("(sentence embeddings)", "-", "embeddings", f"{manifest.embeddings_max_abs_diff:.2g}")
    out.print(table)


@app.command()
def compress(
    source: Annotated[Path, typer.Argument(help="a chain folder (or an exported one, for --int8, --fp16 and --bf16)", metavar="DIR")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="the folder to write (must not exist, unless --overwrite)")],
    int8: Annotated[
        bool | None,
        typer.Option("--int8/--no-int8", help="int8 weights (ONNX Runtime); the default without --trunk-layers, --fp16 or --bf16"),
    ] = None,
    static: Annotated[
        bool,
        typer.Option(
            "--static",
            help="static int8 (implies --int8): activation ranges calibrated on the tasks' training texts (or --texts) by NNCF, "
            "for OpenVINO (pip install finechain[openvino])",
        ),
    ] = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="store the exported weights as fp16 (half the size; computed in fp32), after --int8 if given")
    ] = False,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16", help="store the exported weights as bf16 (half the size, fp32's range, coarser than fp16; computed in fp32)"
        ),
    ] = False,
    trunk_layers: Annotated[
        int | None, typer.Option("--trunk-layers", min=1, help="a student with this many trunk layers, distilled from the chain")
    ] = None,
    branch_layers: Annotated[
        str | None,
        typer.Option(
            "--branch-layers",
            metavar="N[,TASK=M]",
            help="a student's layers per task branch (default: the chain's); per task too: '0,intent=1' (the rest 0, intent 1)",
        ),
    ] = None,
    ffn_width: Annotated[
        str | None,
        typer.Option(
            "--ffn-width",
            metavar="SHARE[,TASK=SHARE]",
            help="a student whose layers keep this share of their feed-forward neurons (0.75: the most active three quarters); "
            "a task's branch narrower still: '0.875,intent=0.5'",
        ),
    ] = None,
    attention_heads: Annotated[
        str | None,
        typer.Option(
            "--attention-heads",
            metavar="N[,TASK=M]",
            help="a student whose layers keep their N most used attention heads; a task's branch fewer still: '12,intent=8'",
        ),
    ] = None,
    texts_file: Annotated[
        Path | None,
        typer.Option(
            "--texts", help="unlabelled texts to distil on as well, and to calibrate --static on (.txt a line each, .csv/.tsv/.jsonl text)"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="distillation epochs")] = 3,
    temperature: Annotated[float, typer.Option(min=0.01, help="softening of the teacher's outputs")] = 2.0,
    hard_weight: Annotated[float, typer.Option(min=0.0, help="weight of the gold labels' loss next to the teacher's")] = 0.5,
    hidden_weight: Annotated[
        float, typer.Option(min=0.0, help="weight of matching the teacher trunk's output (hidden-state distillation; 0 = off)")
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out folder")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted distillation from its last checkpoint")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Compress a chain: a student with fewer layers (--trunk-layers, --branch-layers) and/or fewer feed-forward neurons
    or attention heads per layer (--ffn-width, --attention-heads), each layer started from one of the chain's and
    trained on its outputs over the tasks' training texts (and --texts); and/or int8 weights (ONNX Runtime dynamic
    quantization, or with --static NNCF's calibrated quantization for OpenVINO; an exported folder); and/or fp16 or
    bf16 storage of the exported weights (--fp16, --bf16). The manifest records each step."""
    from finechain.data.readers import read_texts
    from finechain.export.compression import compress_chain, distill_checkpointed, distill_run, student_asked
    from finechain.export.half import Storage

    if fp16 and bf16:
        raise FinechainError("--fp16 and --bf16 are two ways to store the same weights", fix="choose one of them")
    storage: Storage | None = "fp16" if fp16 else "bf16" if bf16 else None
    every, per_task = branch_numbers(branch_layers) if branch_layers is not None else (None, {})
    width, task_width = per_task_values(ffn_width, "--ffn-width", float, "a share of neurons", "0.875,intent=0.5")
    heads, task_heads = per_task_values(attention_heads, "--attention-heads", int, "a number of heads", "12,intent=8")
    narrower = {"task_ffn_width": task_width, "task_attention_heads": task_heads}
    student = student_asked(trunk_layers, every, per_task, width, heads, **narrower)
    texts = [t for t in read_texts(texts_file, "text") if isinstance(t, str)] if texts_file is not None else None
    if texts_file is not None and not texts:  # an empty file given on purpose must not quietly mean "no texts"
        raise FinechainError("no texts in the file", file=texts_file, fix="give a file with a text per line, or drop --texts")
    quantize = int8 if int8 is not None else static or (not student and not storage)
    run = distill_run(out_dir)
    if student and resume and not distill_checkpointed(out_dir):
        err.print(f"compress: no interrupted distillation to resume in {run}; starting one")
    elif student and not resume and distill_checkpointed(out_dir):
        err.print(f"compress: {run} holds the checkpoint of an interrupted distillation; starting over (--resume continues it)")

    def left() -> str:
        if not student:
            return f"nothing is written to {out_dir}; run the same command again"
        if distill_checkpointed(out_dir):
            return f"the distillation is checkpointed at its last validation check in {run}: rerun with --resume to continue"
        return NOTHING_TO_RESUME

    with saying_on_interrupt("compress", left):
        done = compress_chain(
            source,
            out_dir,
            trunk_layers=trunk_layers,
            branch_layers=every,
            task_branch_layers=per_task,
            ffn_width=width,
            attention_heads=heads,
            **narrower,
            texts=texts,
            int8=quantize,
            static=static,
            storage=storage,
            overwrite=overwrite,
            progress=not quiet,
            resume=resume,
            epochs=epochs,
            temperature=temperature,
            hard_weight=hard_weight,
            hidden_weight=hidden_weight,
        )
    out.print(f"compressed to {out_dir!s} ({'; '.join(done.steps)})")  # as a title it would wrap to the table's width
    table = Table(box=None)
    for column in done.rows[0] if done.rows else ():
        table.add_column(column)
    for row in done.rows:
        table.add_row(*row.values())
    out.print(table)
    if quantize:
        from finechain.inference.cpu_features import cpu_has_int8_dot

        if cpu_has_int8_dot() is False:
            err.print(
                "note: this CPU has no int8 dot-product instructions (VNNI or AMX): int8 makes the folder smaller here, not "
                "faster (docs/benchmarks.md, 'Export on an AVX2 CPU'); a student with fewer layers (--trunk-layers) does less work "
                "on any CPU",
            )


def branch_numbers(text: str) -> tuple[int | None, dict[str, int]]:
    """``--branch-layers``: a number for every task, ``task=number`` pairs, or both, comma-separated.

    Example:
        >>> branch_numbers("1"), branch_numbers("0,intent=1, slots=2")
        ((1, {}), (0, {'intent': 1, 'slots': 2}))
    """
    return per_task_values(text, "--branch-layers", int, "a number of layers", "0,intent=1 (intent keeps 1 layer, the other tasks none)")


def per_task_values(
    text: str | None, option: str, kind: Callable[[str], Number], what: str, example: str
) -> tuple[Number | None, dict[str, Number]]:
    """An option's value for every task, ``TASK=VALUE`` pairs, or both, comma-separated (``kind`` int: whole numbers
    only); ``(None, {})`` when the option was not given.

    Example:
        >>> per_task_values("0.875,intent=0.5", "--ffn-width", float, "a share", "0.875,intent=0.5")
        (0.875, {'intent': 0.5})
        >>> per_task_values(None, "--attention-heads", int, "a number of heads", "12,intent=8")
        (None, {})
    """
    every: Number | None = None
    per_task: dict[str, Number] = {}
    if text is None:
        return every, per_task
    for part in (p.strip() for p in text.split(",")):
        name, named, value = (x.strip() for x in part.partition("=")) if "=" in part else ("", "", part)
        try:
            number = kind(value) if kind is not int or value.isdecimal() else None
        except ValueError:
            number = None
        if number is None or (named and not name) or (not named and every is not None):
            unit = "NUMBER" if kind is int else "VALUE"
            raise FinechainError(
                f"{option} {text!r}: {part!r} is not {what} or TASK={unit}", field=option.lstrip("-"), fix=f"e.g. {option} {example}"
            )
        if named and name in per_task:
            raise FinechainError(
                f"{option} {text!r}: task {name!r} is given twice", field=option.lstrip("-"), fix=f"name {name} once, with its own value"
            )
        if named:
            per_task[name] = number
        else:
            every = number
    return every, per_task


@app.command()
def info(chain_dir: Annotated[Path, typer.Argument(help="a trained chain folder", metavar="CHAIN_DIR")]) -> None:
    """Show a chain's backbone, split and tasks with their metrics (an exported folder: what was done to it too)."""
    from finechain.inference.exported import is_exported

    if is_exported(chain_dir):
        _exported_info(chain_dir)
        return
    from finechain.model.manifest import branch_narrowing, narrowing, read_manifest, task_versions

    manifest = read_manifest(chain_dir)
    bb = manifest.backbone
    out.print(Text.assemble((str(chain_dir), "bold"), f"  finechain {manifest.finechain_version}"))
    out.print(f"backbone {bb.name} ({bb.kind}: {bb.location}, sha256 {bb.sha256[:12]}…)")
    trunk = manifest.trunk
    sharing = f"trunk tuned jointly (epoch {trunk.best_epoch} kept)" if trunk else "pretrained trunk, frozen"
    out.print(f"split {manifest.split} of {manifest.num_layers} layers, {sharing}, max_length {manifest.max_length}")
    if manifest.compression is not None:
        teacher_layers = len(manifest.compression.get("teacher", {}).get("layers", [])) or "?"
        narrowed = narrowing(manifest.ffn_width, manifest.attention_heads) + branch_narrowing(manifest.compression.get("branches", {}))
        kept = "every backbone layer" if manifest.layers is None else f"backbone layers {manifest.layers}"  # --ffn-width alone
        out.print(f"student: {kept} of the teacher's {teacher_layers}{narrowed}, distilled")
    table = Table(box=None, pad_edge=False, header_style="bold")  # fits 80 columns (logs, pipes)
    for column in ("task", "type", "labels", "branch", "stored", "metric", "val", "test"):
        table.add_column(column, no_wrap=True)
    for name, task in manifest.tasks.items():
        metrics = task.metrics or {}
        metric = task.metric or ""
        mode = f"LoRA r{task.branch.get('rank')}" if task.branch.get("mode") == "lora" else task.branch.get("mode", "full")
        table.add_row(
            name,
            task.head.type,
            str(len(task.head.labels) or "-"),  # a regression has none
            f"{task.branch_layers} {mode}",
            compact_count(task.stored_parameters or task.parameters),
            metric,
            *(f"{metrics[split][metric]:.4f}" if metric in metrics.get(split, {}) else "-" for split in ("validation", "test")),
        )
    out.print(table)
    _print_flows(manifest.flows)
    for name, task in manifest.tasks.items():  # what finechain update did, and what finechain restore can bring back
        updates, kept = (task.data or {}).get("updates", []), task_versions(chain_dir, name)
        if updates:
            last = updates[-1]
            added = f", new labels {', '.join(last['new_labels'])}" if last.get("new_labels") else ""
            source = f"{Path(last.get('file', '?')).name}, {last.get('rows', '?')} rows{added}"
            out.print(f"{name}: updated {len(updates)} time{'s' if len(updates) > 1 else ''}, last on {last.get('date', '?')} ({source})")
        if kept:
            restore = f"finechain restore {chain_dir} -t {name} --version N"
            out.print(f"{name}: versions kept {', '.join(map(str, kept))} ({restore})")


def _exported_info(folder: Path) -> None:
    """``info`` for an exported folder: backbone, steps, weights and each task's largest difference to PyTorch."""
    from finechain.inference.exported import read_export_manifest

    manifest = read_export_manifest(folder)
    out.print(Text.assemble((str(folder), "bold"), f"  exported by finechain {manifest.finechain_version}"))
    out.print(
        f"backbone {manifest.backbone}, split {manifest.split} of {manifest.layers} layers, max_length {manifest.max_length}",
    )
    out.print(f"{manifest.weights} weights; steps: {'; '.join(manifest.steps)}")
    if manifest.runtime != "onnxruntime":
        out.print(
            f"made for {manifest.runtime} (runtime auto picks it where it is installed and the CPU has int8 dot products: VNNI or AMX)",
        )
    if manifest.embeddings:
        diff = "-" if manifest.embeddings_max_abs_diff is None else f"{manifest.embeddings_max_abs_diff:.2g}"
        out.print(f"sentence embeddings: {manifest.embeddings} ({manifest.embedding_size} values; largest difference {diff})")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("task", "type", "labels", "metric", "test", "largest difference"):
        table.add_column(column, no_wrap=True)
    for name, task in manifest.tasks.items():
        metric = task.metric or ""
        test = task.metrics.get("test", {}).get(metric)
        diff = "-" if task.max_abs_diff is None else f"{task.max_abs_diff:.2g}"
        table.add_row(name, task.type, str(len(task.head.get("labels", [])) or "-"), metric, "-" if test is None else f"{test:.4f}", diff)
    out.print(table)
    _print_flows(manifest.flows)


def _print_flows(flows: list[dict[str, Any]]) -> None:
    """A line per flow of a manifest: its stages and how each reads the one before."""
    from finechain.spec.flows import FlowSpec, describe_flow

    for flow in flows:
        out.print(Text(describe_flow(FlowSpec.model_validate(flow))))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where to save the demo chain")] = Path("demo-chain"),
    quiet: QuietOpt = False,
) -> None:
    """Train the bundled demo chain (intent, sentiment and NER on one trunk), then query it."""
    from finechain import Chain
    from finechain.jobs.training import train_chain

    spec = Path(__file__).resolve().parent.parent / "demo" / "demo.yaml"
    err.print(f"training the demo chain from {spec}")
    rows = train_chain(spec, out_dir, progress=not quiet, console=err)
    out.print(_metrics_table(f"demo chain saved to {out_dir!s}", rows))
    chain = Chain.from_pretrained(out_dir)
    examples = [
        "I still haven't received my new card, when will it arrive?",
        "My card got blocked in Berlin after I typed the wrong PIN",
        "an utterly charming and hilarious film",
        "Angela Merkel told Reuters the plan was thin and wooden",
    ]
    table = Table(title="example predictions (all tasks, one trunk pass)")
    for column in ("text", *chain.tasks):
        table.add_column(column)
    for text, prediction in zip(examples, chain.predict(examples), strict=True):
        table.add_row(text, *(answer.summary() for answer in prediction.values()))
    out.print(table)


def compact_count(n: int) -> str:
    """A parameter count in a few characters.

    Example:
        >>> compact_count(3_578_573), compact_count(111_234), compact_count(950)
        ('3.6M', '111k', '950')
    """
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Command-line usage errors: typer >= 0.29 raises its own copy of click's (``TyperException``), older typer click's."""
    found: list[type[Exception]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:  # newer typer does not need click
        pass
    return tuple(found)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C (SIGINT) or SIGTERM: stop, running every ``finally`` on the way out (temporary files removed, locks
    released). Raised as :class:`Interrupted`, not ``KeyboardInterrupt``: typer turns a KeyboardInterrupt into a return
    value of 130, which a caller that forgets to check it reports as success."""
    raise Interrupted(signal.Signals(signum).name)


def _send_lost_interrupt_again(unraisable: Any) -> None:
    """``sys.unraisablehook``: an interrupt whose handler ran while Python was in a ``__del__`` (or another callback
    whose exceptions it ignores: a regex object collected in the middle of training) is printed as "Exception ignored"
    and lost, and the command runs on as if never stopped. Send the signal again instead: its handler then runs in the
    code the callback interrupted (sent from a thread a moment later: sent from here, it would run here, in the hook,
    and be ignored again). Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, Interrupted):
        number = signal.Signals[unraisable.exc_value.signal_name]
        again = threading.Timer(0.01, os.kill, (os.getpid(), number))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def _stop_on_interrupts() -> None:
    """Ctrl-C and SIGTERM raise :class:`Interrupted` (:func:`_interrupt`), also where they land in a ``__del__``
    (:func:`_send_lost_interrupt_again`); SIGINT also when started in the background, where it comes ignored.

    Example:
        >>> _stop_on_interrupts()  # doctest: +SKIP
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.unraisablehook = _send_lost_interrupt_again


def _out_of_memory(error: BaseException) -> bool:
    """A CPU or GPU allocation failure (PyTorch raises these as RuntimeError subclasses)."""
    text = str(error)
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _left_hint(stop: BaseException, training: bool) -> str:
    """What an interrupted command left, as its job says (the interrupt's ``job`` and ``left``: a training run's saved
    tasks and checkpoints, an update's chain unchanged or saved); for a training command stopped before its job began,
    that nothing is checkpointed; else nothing.

    Example:
        >>> _left_hint(KeyboardInterrupt(), training=True)
        ' (training: stopped before its first validation check, so nothing is checkpointed; run the same command again)'
        >>> _left_hint(KeyboardInterrupt(), training=False)
        ''
    """
    left = getattr(stop, "left", None)
    if left is None and not training:
        return ""
    return f" ({getattr(stop, 'job', 'training')}: {left or NOTHING_TO_RESUME})"


def _one_line_summaries() -> None:
    """Each command's line in ``finechain --help``: its docstring's first paragraph with the source's line breaks
    joined (typer keeps them there, breaking the list's lines mid-sentence); ``finechain CMD --help`` reflows anyway."""
    for command in app.registered_commands:
        doc = (command.callback.__doc__ or "") if command.callback else ""
        if command.short_help is None and doc:
            command.short_help = " ".join(doc.strip().split("\n\n")[0].split())


_one_line_summaries()


def main() -> None:
    """Entry point: user errors become one red line and exit code 2 (1 when the machine ran out of something), an
    interrupt one line and exit 130 (SIGTERM: 143); never a traceback for any of them."""
    _stop_on_interrupts()
    training = len(sys.argv) > 1 and sys.argv[1] in {"train", "add-task", "demo"}
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # typer returns, not raises, the exit code of some ends
            raise SystemExit(code)
    except FinechainError as error:
        err.print(tagged("error:", "red", error.format()))
        raise SystemExit(error.exit_code) from None
    except typer.Exit as done:  # --help and friends
        raise SystemExit(done.exit_code) from None
    except (typer.Abort, KeyboardInterrupt, Interrupted) as stop:
        hint = _left_hint(stop, training)
        name = getattr(stop, "signal_name", "SIGINT")
        err.print(tagged("interrupted", "yellow", f"by {name}{hint}"))
        raise SystemExit(143 if name == "SIGTERM" else 130) from None
    except _usage_errors() as error:  # unknown option, missing argument, bad value: click's usage message
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            err.print(tagged("error:", "red", str(error)))
        raise SystemExit(getattr(error, "exit_code", 2)) from None
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        traceback.clear_frames(error.__traceback__)  # what the failed step's frames still hold goes before printing
        gc.collect()
        fix = "lower --batch-size (or training.batch_size / eval_batch_size, max_length), or free memory"
        message = ResourceError("out of memory", fix=fix).format()
        try:
            err.print(tagged("error:", "red", message))
        except MemoryError:  # too little left even to render the line: write it plainly
            os.write(2, f"error: {message}\n".encode())
        raise SystemExit(ResourceError.exit_code) from None


if __name__ == "__main__":
    main()
