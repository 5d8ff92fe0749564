"""Training a routed stage on the rows its route sends it (a flow stage's ``train_on``).

A routed stage (``after`` + ``when``/``otherwise``) sees at prediction time only the texts its upstream stage sends
it. ``train_on: predicted`` trains its task on the rows of its own files that the upstream stage's *predictions*
send there (its input as it will see it: the router's mistakes included, so the stage learns from what it will
really get); ``train_on: gold`` on the rows whose *gold* upstream label sends them there (read from the same file,
with the upstream task's label column: clean, but a text the router sends wrongly at prediction time was never
seen in training). Validation and test files are chosen the same way, so the task is selected and scored on what
reaches it; their rows whose labels the chosen training rows never have (a wrong route can bring any) are left out
and counted in the data's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finechain.data.prepare import Split, TaskData, assemble_task_data, read_split
from finechain.errors import DataError
from finechain.flows.flow import Flow, FlowResult, routes_to
from finechain.heads import head_type
from finechain.inference.engine import Engine
from finechain.spec import TaskSpec
from finechain.spec.flows import FlowSpec, StageSpec

Answers = dict[tuple[str, int, tuple[str, ...]], list[FlowResult]]  # (file, rows, stages run) -> their answers


def predicted_routes(
    flow: FlowSpec, stage: StageSpec, engines: Mapping[str | None, Engine], texts: list[Any], *, cache: Answers | None = None, key: str = ""
) -> list[bool]:
    """Per text, whether the trained stages above ``stage`` send it there (``stage``'s own task need not exist yet).
    With a ``cache`` (and a ``key`` naming the texts, such as their file), the upstream stages' answers are kept and
    reused for the sibling stages that hang from the same ones: the router runs once per file, not once per route.

    Example:
        >>> predicted_routes(flow, flow.stage("slots_music"), {None: chain.engine}, ["play some jazz"])  # doctest: +SKIP
        [True]
    """
    if not texts:
        return []
    above = set(flow.ancestors(stage.key))
    slot = (key, len(texts), tuple(sorted(above)))
    results = cache.get(slot) if cache is not None and key else None
    if results is None:
        results = Flow(flow, engines, only=above).run(texts)
        if cache is not None and key:
            cache[slot] = results
    return [routes_to(flow, stage, result.answers.get(stage.after or "")) for result in results]


def gold_routes(flow: FlowSpec, stage: StageSpec, labels: list[Any]) -> list[bool]:
    """Per row, whether its gold upstream label (a label, or a list for a multi-label task) sends it to ``stage``:
    one of ``when.labels``, or for the default route none of its siblings' label routes.

    Example:
        >>> spec = FlowSpec.model_validate({"name": "f", "stages": [{"task": "a"},
        ...     {"task": "b", "after": "a", "when": {"labels": ["x"]}}, {"task": "c", "after": "a", "otherwise": True}]})
        >>> gold_routes(spec, spec.stages[1], ["x", "y"]), gold_routes(spec, spec.stages[2], ["x", "y"])
        ([True, False], [False, True])
    """

    def names(label: Any) -> set[str]:
        return set(label) if isinstance(label, list) else {label}

    if stage.when is not None:
        wanted = set(stage.when.labels or [])
        return [bool(names(label) & wanted) for label in labels]
    taken = {name for s in flow.children(stage.after) if s.when is not None for name in s.when.labels or []}
    return [not names(label) & taken for label in labels]


def _upstream_labels(
    split: Split, upstream: TaskSpec, fix: str = "give every row the upstream task's label, or use 'train_on: predicted'"
) -> list[Any]:
    """The upstream task's gold label of every row of ``split``, read from the same file with its label column and
    matched by line (a row without one is an error with ``fix``)."""
    path = Path(split.file)
    gold = read_split(path, upstream, head_type(upstream.type))
    by_line = dict(zip(gold.lines, gold.labels, strict=True))
    missing = next((line for line in split.lines if line not in by_line), None)
    if missing is not None:
        raise DataError(
            f"no '{upstream.label_column}' label for '{upstream.name}' on this row",
            file=path,
            line=missing,
            fix=fix,
        )
    return [by_line[line] for line in split.lines]


def routed_task_data(
    task: TaskSpec,
    flow: FlowSpec,
    stage: StageSpec,
    engines: Mapping[str | None, Engine],
    *,
    upstream: TaskSpec | None = None,
    seed: int = 13,
    cache: Answers | None = None,
) -> TaskData:
    """``task``'s data (its train, dev and test files) cut down to the rows ``stage``'s route sends it, by the
    upstream stage's predictions (``stage.train_on == "predicted"``, run on ``engines``) or by the upstream task's gold
    labels (``"gold"``: ``upstream`` is that task's spec, whose label column the files also hold). Pass one ``cache``
    dict to the calls for a flow's sibling stages and the upstream stages run once per file.

    Example:
        >>> data = routed_task_data(slots_spec, flow, flow.stage("slots_music"), {None: chain.engine})  # doctest: +SKIP
        >>> data.provenance["route"]["rows"]["train"]  # doctest: +SKIP
        [1914, 13084]
    """
    head_cls = head_type(task.type)
    files = {"train": task.train, "dev": task.dev, "test": task.test}
    splits: dict[str, Split] = {}
    counts: dict[str, list[int]] = {}
    for name, path in files.items():
        if path is None:
            continue
        split = read_split(Path(path), task, head_cls)
        if stage.train_on == "gold":
            if upstream is None:
                raise ValueError("gold routes need the upstream task's spec")
            keep = gold_routes(flow, stage, _upstream_labels(split, upstream))
        else:
            keep = predicted_routes(flow, stage, engines, split.texts, cache=cache, key=str(Path(path).absolute()))
        splits[name] = split.subset([i for i, k in enumerate(keep) if k])
        counts[name] = [len(splits[name]), len(split)]
    train = splits["train"]
    if not len(train):
        raise DataError(
            f"no training row of task '{task.name}' reaches stage '{stage.key}' ({stage.train_on} routes)",
            file=train.file,
            fix="check the route's labels, or give the task rows that reach it",
        )
    known = set(head_cls.label_names(train.labels))  # empty for regression: nothing to leave out
    dropped: dict[str, int] = {}
    for name in ("dev", "test"):
        if name in splits and known:
            split = splits[name]
            fits = [i for i, labels in enumerate(split.labels) if set(head_cls.label_names([labels])) <= known]
            dropped[name] = len(split) - len(fits)
            splits[name] = split.subset(fits)
    dev, test = splits.get("dev"), splits.get("test")
    data = assemble_task_data(task, head_cls, train, dev if dev else None, test if test else None, seed)
    data.provenance["route"] = {
        "flow": flow.name,
        "stage": stage.key,
        "train_on": stage.train_on,
        "rows": counts,
        "left_out_unseen_labels": dropped,
    }
    return data


def seen_allow(task: TaskSpec, upstream: TaskSpec) -> dict[str, list[str]]:
    """What a flow stage's ``allow: seen`` stands for: per label of ``upstream``, the labels (a tagger: the span types)
    that ``task``'s training rows hold with it, read from ``task``'s training file, which holds the upstream task's
    label column too (a row without it is a one-line error).

    Example:
        >>> seen_allow(slots_spec, intent_spec)["PlayMusic"]  # doctest: +SKIP
        ['album', 'artist', 'genre', 'music_item', 'playlist', 'service', 'sort', 'track', 'year']
    """
    if task.train is None:
        raise DataError(f"'allow: seen' reads the training file of task '{task.name}', which has none", fix="list the labels under 'allow'")
    head_cls = head_type(task.type)
    split = read_split(Path(task.train), task, head_cls)
    fix = f"give each of its rows a '{upstream.label_column}' label for '{upstream.name}', or list the labels under 'allow'"
    try:
        golds = _upstream_labels(split, upstream, fix)
    except DataError as error:
        if error.line is not None:  # a row without the label: said so, with the fix
            raise
        message = f"'allow: seen' reads the '{upstream.name}' labels from the training file of '{task.name}', which cannot give them"
        raise DataError(f"{message}: {error.message}", file=error.file, fix=fix) from None
    found: dict[str, set[str]] = {}
    upstream_cls = head_type(upstream.type)
    for gold, parsed in zip(golds, split.labels, strict=True):
        for label in upstream_cls.allow_names(gold):
            found.setdefault(label, set()).update(head_cls.allow_names(parsed))
    return {label: sorted(names) for label, names in sorted(found.items())}


def fill_seen(flow: FlowSpec, specs: Mapping[str, TaskSpec]) -> FlowSpec:
    """``flow`` with the ``allow: seen`` of each stage filled in (:func:`seen_allow`) where the stage and the one it
    reads run tasks of this chain that ``specs`` hold, the stage's with a training file; the other stages as they are.

    Example:
        >>> fill_seen(flow, {"intent": intent_spec, "slots": slots_spec}).stages[1].allow["GetWeather"][:2]  # doctest: +SKIP
        ['city', 'condition_description']
    """
    keys = {stage.key for stage in flow.stages}
    stages = []
    for stage in flow.stages:
        upstream = flow.stage(stage.after) if stage.after in keys else None
        if stage.allow == "seen" and upstream is not None and stage.chain is None and upstream.chain is None:
            task, above = specs.get(stage.task), specs.get(upstream.task)
            if task is not None and above is not None and task.train is not None:
                stage = stage.model_copy(update={"allow": seen_allow(task, above)})
        stages.append(stage)
    return flow.model_copy(update={"stages": stages})
