"""Flows in a spec: small graphs of stages where one task's answer decides (routing) or feeds (spans) the next.

A flow is a list of stages; each stage runs a task of this chain (or of another saved chain, ``chain:``) and, unless
it is a root, reads the answer of the stage named in ``after``: it runs only when that answer meets ``when`` (labels,
score bounds), or with ``otherwise: true`` when none of its siblings' label routes held (the default route); a stage
with ``when: {score_below: 0.5}`` is the low-confidence fallback, and runs besides whatever route the label took.
``input: span`` runs the stage on each span the upstream tagger found (``marked``: on the whole text with the span
marked), optionally only spans of ``types``. ``allow`` restricts a stage to the labels (a tagger's: the span types)
that go with the upstream answer's label, e.g. the slot types each intent has.

The checks that need only the spec live here (:func:`flow_problem`); those that need a task's labels run when the
labels are known (:func:`label_problem`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finechain.spec.names import TASK_NAME

STRICT = ConfigDict(extra="forbid")
SPAN_INPUTS = ("span", "marked")


class Condition(BaseModel):
    """When a routed stage runs: every given test must hold for the upstream answer (its label, or for a multi-label
    task any of its labels, and the score of that label)."""

    model_config = STRICT

    labels: list[str] | None = Field(None, min_length=1, description="the upstream label is one of these")
    score_at_least: float | None = Field(None, ge=0.0, le=1.0, description="the upstream answer's score is at least this")
    score_below: float | None = Field(None, ge=0.0, le=1.0, description="the upstream answer's score is below this (a fallback)")

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if self.labels is None and self.score_at_least is None and self.score_below is None:
            raise ValueError("a condition needs labels, score_at_least or score_below")
        return self


class StageSpec(BaseModel):
    """One stage of a flow."""

    model_config = STRICT

    task: str = Field(pattern=TASK_NAME, description="the task this stage runs")
    name: str | None = Field(None, pattern=TASK_NAME, description="the stage's name in results (default: the task's)")
    chain: str | None = Field(None, description="another saved chain folder holding the task (default: this chain)")
    after: str | None = Field(None, description="the stage whose answer this one reads (none: a root, reads the text)")
    when: Condition | None = None
    otherwise: bool = Field(False, description="run when no sibling's 'when' held (the default route)")
    input: Literal["text", "span", "marked"] = Field("text", description="the text, each upstream span, or the text with it marked")
    types: list[str] | None = Field(None, min_length=1, description="only upstream spans of these types")
    allow: dict[str, list[str]] | Literal["seen"] | None = Field(
        None,
        description="what this stage may answer for each label of the stage it reads: upstream label -> this task's "
        "labels (a tagger's: span types), the others ruled out before decoding (an upstream label not listed rules out "
        "nothing); `seen`: the pairs the task's training file holds, with the upstream task's label on each row (filled "
        "in when the chain is trained)",
    )
    train_on: Literal["data", "predicted", "gold"] = Field(
        "data",
        description="what a routed stage's task trains on: its training file as given (data), the rows of that file the "
        "upstream stage's predictions send it (predicted: its input as it will see it), or those its gold label sends (gold)",
    )

    @property
    def key(self) -> str:
        """The stage's name: ``name``, or its task's."""
        return self.name or self.task


class FlowSpec(BaseModel):
    """A named flow: its stages, roots first or in any order (``after`` gives the graph).

    Example:
        >>> flow = FlowSpec.model_validate({"name": "f", "stages": [{"task": "intent"}, {"task": "slots", "after": "intent"}]})
        >>> [s.key for s in flow.stages]
        ['intent', 'slots']
    """

    model_config = STRICT

    name: str = Field(pattern=TASK_NAME)
    stages: list[StageSpec] = Field(min_length=1)

    def stage(self, key: str) -> StageSpec:
        """The stage called ``key``."""
        return next(s for s in self.stages if s.key == key)

    def children(self, key: str | None) -> list[StageSpec]:
        """The stages that read ``key``'s answer (``None``: the roots)."""
        return [s for s in self.stages if s.after == key]

    def ancestors(self, key: str) -> list[str]:
        """The stages ``key`` hangs from: the one it reads, that one's, ... up to its root (an acyclic flow).

        Example:
            >>> stages = [{"task": "a"}, {"task": "b", "after": "a"}, {"task": "c", "after": "b"}]
            >>> flow = FlowSpec.model_validate({"name": "f", "stages": stages})
            >>> flow.ancestors("c")
            ['b', 'a']
        """
        found, above = [], self.stage(key).after
        while above is not None:
            found.append(above)
            above = self.stage(above).after
        return found


def describe_flow(flow: FlowSpec) -> str:
    """One line saying what ``flow`` runs: each stage with its task (where its name differs), chain, the stage it reads
    and how (route, default route, spans, what it allows).

    Example:
        >>> flow = FlowSpec.model_validate({"name": "assistant", "stages": [{"task": "intent"},
        ...     {"task": "slots", "after": "intent", "allow": {"PlayMusic": ["artist"], "GetWeather": ["city"]}},
        ...     {"name": "human", "task": "triage", "chain": "../help", "after": "intent", "when": {"score_below": 0.5}}]})
        >>> for part in describe_flow(flow).split("; "):
        ...     print(part)
        flow assistant: intent
        slots after intent, restricted by its label (2 listed)
        human (triage of ../help) after intent when score < 0.5
    """
    parts = []
    for stage in flow.stages:
        task = stage.task if stage.chain is None else f"{stage.task} of {stage.chain}"
        words = [stage.key if task == stage.key else f"{stage.key} ({task})"]
        if stage.after is not None:
            words.append(f"after {stage.after}" if stage.input == "text" else f"on each {stage.input} span of {stage.after}")
        if stage.types:
            words.append(f"of types {', '.join(stage.types)}")
        when = stage.when
        if when is not None:
            tests = [f"label in {', '.join(when.labels)}"] if when.labels else []
            tests += [f"score >= {when.score_at_least:g}"] if when.score_at_least is not None else []
            tests += [f"score < {when.score_below:g}"] if when.score_below is not None else []
            words.append("when " + " and ".join(tests))
        if stage.otherwise:
            words.append("otherwise")
        if stage.allow is not None:
            listed = "as training saw" if stage.allow == "seen" else f"{len(stage.allow)} listed"
            words[-1] += f", restricted by its label ({listed})"
        parts.append(" ".join(words))
    return f"flow {flow.name}: " + "; ".join(parts)


def unlisted_by_allow(flows: list[FlowSpec], task: str, names: list[str]) -> list[tuple[str, str, list[str]]]:
    """The stages of this chain's ``task`` whose ``allow`` lists none of some ``names`` (new labels, as ``allow``
    names them): (flow, stage, those names). Such a stage rules them out after every upstream label it lists.

    Example:
        >>> flow = FlowSpec.model_validate({"name": "f", "stages": [{"task": "intent"},
        ...     {"task": "slots", "after": "intent", "allow": {"PlayMusic": ["artist"]}}]})
        >>> unlisted_by_allow([flow], "slots", ["artist", "podcast"])
        [('f', 'slots', ['podcast'])]
    """
    found = []
    for flow in flows:
        for stage in flow.stages:
            if stage.task == task and stage.chain is None and isinstance(stage.allow, dict):
                listed = {name for names_ in stage.allow.values() for name in names_}
                missing = [name for name in names if name not in listed]
                if missing:
                    found.append((flow.name, stage.key, missing))
    return found


Problem = tuple[str, tuple[str | int, ...], str]  # message, where (relative to the stage), fix


def flow_problem(flow: FlowSpec, span_tasks: set[str], own_tasks: set[str] | None = None) -> tuple[int, Problem] | None:
    """The first thing wrong with ``flow`` that the spec alone shows, as (stage index, problem); ``span_tasks`` are the
    tasks (of this chain) that produce spans, ``own_tasks`` this chain's tasks (None: not known here).

    Example:
        >>> bad = FlowSpec.model_validate({"name": "f", "stages": [{"task": "a", "after": "b"}]})
        >>> flow_problem(bad, set())[1][0]
        "stage 'a' reads 'b', which is not a stage of flow 'f'"
    """
    keys = [s.key for s in flow.stages]
    for i, stage in enumerate(flow.stages):
        if stage.key in keys[:i]:  # the second occurrence is the one to point at
            return i, (f"stage '{stage.key}' appears twice in flow '{flow.name}'", ("task",), "give one of them its own 'name'")
        if own_tasks is not None and stage.chain is None and stage.task not in own_tasks:
            return i, (f"unknown task '{stage.task}' in flow '{flow.name}'", ("task",), f"use one of {sorted(own_tasks)}, or set 'chain:'")
        trained = _training_problem(stage)
        if trained is not None:
            return i, trained
        allowing = _allow_problem(stage)
        if allowing is not None:
            return i, allowing
        if stage.after is None:
            for field in ("when", "otherwise", "types", "allow"):
                if getattr(stage, field):
                    return i, (f"stage '{stage.key}' has '{field}' but reads no stage", (field,), "add 'after: <stage>', or drop it")
            if stage.input != "text":
                return i, (f"stage '{stage.key}' reads spans but no stage", ("input",), "add 'after: <a tagging stage>'")
            continue
        if stage.after not in keys:
            message = f"stage '{stage.key}' reads '{stage.after}', which is not a stage of flow '{flow.name}'"
            return i, (message, ("after",), f"use one of {keys}")
        if stage.when is not None and stage.otherwise:
            return i, (f"stage '{stage.key}' has both 'when' and 'otherwise'", ("otherwise",), "keep one: otherwise is the default route")
        upstream = flow.stage(stage.after)
        if stage.train_on == "gold" and upstream.chain is not None:
            message = f"stage '{stage.key}' trains on gold routes of '{stage.after}', a task of another chain"
            return i, (message, ("train_on",), "use 'train_on: predicted', or route on a task of this chain")
        spans = upstream.chain is None and upstream.task in span_tasks
        if stage.input in SPAN_INPUTS and upstream.chain is None and not spans and own_tasks is not None:
            message = f"stage '{stage.key}' reads spans of '{stage.after}', which produces none"
            return i, (message, ("input",), "read spans of a tagging stage")
        if stage.types and stage.input not in SPAN_INPUTS:
            return i, (f"stage '{stage.key}' has 'types' but reads the text", ("types",), "set 'input: span' or 'input: marked'")
        if stage.input in SPAN_INPUTS and (stage.when is not None or stage.otherwise):
            return i, (f"stage '{stage.key}' reads spans: it runs on each one", ("when",), "filter spans with 'types' instead")
        if spans and stage.input == "text" and (stage.when is not None or stage.otherwise):
            return i, (f"a condition on '{stage.after}', which produces spans, not a label", ("when",), "read its spans: 'input: span'")
    cycle = _cycle(flow)
    if cycle is not None:
        return keys.index(cycle[0]), (f"flow '{flow.name}' has a cycle: {' -> '.join(cycle)}", ("after",), "a stage cannot read itself")
    return None


def _allow_problem(stage: StageSpec) -> Problem | None:
    """What is wrong with a stage's ``allow`` that the spec alone shows: it restricts the answer a stage gives to the
    text, by the label of the stage it reads, and lists something for each label it names."""
    if stage.allow == {}:
        return f"stage '{stage.key}' allows nothing", ("allow",), "list labels per upstream label, write 'allow: seen', or drop it"
    if stage.allow is None or stage.after is None:
        return None  # none, or reported with the stage's other fields that need an upstream stage
    if stage.input != "text":
        return f"stage '{stage.key}' reads spans: 'allow' restricts a stage that reads the text", ("allow",), "drop 'allow'"
    return None


def _training_problem(stage: StageSpec) -> Problem | None:
    """What is wrong with a stage's ``train_on``: only a routed stage of this chain that reads the text has rows to
    choose, and gold routes exist for label conditions only."""
    if stage.train_on == "data":
        return None
    where, fix = ("train_on",), "drop 'train_on': the task trains on its own file"
    if stage.when is None and not stage.otherwise:
        return f"stage '{stage.key}' has 'train_on: {stage.train_on}' but no route to choose its rows", where, fix
    if stage.input != "text":
        return f"stage '{stage.key}' reads spans: 'train_on' chooses rows of routed stages only", where, fix
    if stage.chain is not None:
        return f"stage '{stage.key}' runs a task of another chain: it is trained there", where, fix
    if stage.train_on == "gold" and stage.when is not None and stage.when.labels is None:
        message = f"stage '{stage.key}' routes on a score: gold data has labels, not scores"
        return message, where, "use 'train_on: predicted', or route on 'labels'"
    return None


def route_trained(flows: list[FlowSpec]) -> dict[str, tuple[FlowSpec, StageSpec]]:
    """The tasks a flow stage trains on its route's rows (``train_on`` predicted or gold): task -> (flow, stage).

    Example:
        >>> flow = FlowSpec.model_validate({"name": "f", "stages": [
        ...     {"task": "intent"}, {"task": "slots", "after": "intent", "when": {"labels": ["a"]}, "train_on": "predicted"}]})
        >>> {task: stage.train_on for task, (_, stage) in route_trained([flow]).items()}
        {'slots': 'predicted'}
    """
    found: dict[str, tuple[FlowSpec, StageSpec]] = {}
    for flow in flows:
        for stage in flow.stages:
            if stage.train_on != "data" and stage.chain is None:
                found.setdefault(stage.task, (flow, stage))
    return found


def _cycle(flow: FlowSpec) -> list[str] | None:
    """A cycle of ``after`` links, if any (each stage reads at most one other, so following the links finds it)."""
    for start in flow.stages:
        seen, key = [start.key], start.after
        while key is not None:
            if key in seen:
                return [*seen[seen.index(key) :], key]
            seen.append(key)
            key = flow.stage(key).after if key in {s.key for s in flow.stages} else None
    return None


@dataclass(frozen=True)
class TaskFacts:
    """What a flow needs to know of a stage's task: does it produce spans (and of which types), can it be routed on
    (labels with scores), and its labels."""

    spans: bool
    routes: bool
    labels: list[str]
    span_types: list[str]


def stage_problem(flow: FlowSpec, stage: StageSpec, facts: Callable[[StageSpec], TaskFacts | None]) -> Problem | None:
    """What is wrong with ``stage`` given its tasks' facts (``facts(stage)`` is None for a task that does not exist):
    an unknown task, a span edge from a task without spans or to a type it does not find, a route on a task without
    labels or on a label it does not have.

    Example:
        >>> flow = FlowSpec.model_validate({"name": "f", "stages": [{"task": "a"}, {"task": "b", "after": "a", "when": {"labels": ["x"]}}]})
        >>> stage_problem(flow, flow.stages[1], lambda s: TaskFacts(False, True, ["y"], []))[0]
        "stage 'b' routes on label 'x', which 'a' does not have"
    """
    mine = facts(stage)
    if mine is None:
        return (
            f"stage '{stage.key}' runs task '{stage.task}', which {stage.chain or 'this chain'} does not have",
            ("task",),
            "check the name",
        )
    if stage.after is None:
        return None
    upstream = facts(flow.stage(stage.after))
    if upstream is None:
        return None  # reported at the upstream stage
    if stage.input in SPAN_INPUTS:
        if not upstream.spans:
            return (f"stage '{stage.key}' reads spans of '{stage.after}', which produces none", ("input",), "read a tagging stage")
        unknown = sorted(set(stage.types or []) - set(upstream.span_types))
        if unknown:
            message = f"stage '{stage.key}' keeps spans of type '{unknown[0]}', which '{stage.after}' does not find"
            return (message, ("types",), f"its types are {upstream.span_types}")
        return None
    if (stage.when is not None or stage.otherwise) and not upstream.routes:
        message = f"stage '{stage.key}' routes on '{stage.after}', whose answers have no label to route on"
        return (message, ("when",) if stage.when is not None else ("otherwise",), "route on a classification or multilabel stage")
    return label_problem(stage, upstream.labels) or allow_problem(stage, upstream, mine)


def allow_problem(stage: StageSpec, upstream: TaskFacts, mine: TaskFacts) -> Problem | None:
    """What is wrong with ``stage``'s ``allow`` given its tasks' facts: it needs upstream labels to go by and labels
    (a tagger: span types) of its own to choose among, and names only those.

    Example:
        >>> stage = StageSpec(task="slots", after="intent", allow={"PlayMusic": ["artist", "city"]})
        >>> allow_problem(stage, TaskFacts(False, True, ["PlayMusic"], []), TaskFacts(True, False, [], ["artist"]))[0]
        "stage 'slots' allows 'city' after 'PlayMusic', which 'slots' does not answer"
    """
    if stage.allow is None:
        return None
    if not upstream.routes:
        message = f"stage '{stage.key}' allows labels by the label of '{stage.after}', whose answers have none"
        return message, ("allow",), "read a classification or multilabel stage"
    names = mine.span_types if mine.spans else mine.labels
    if not names:
        return f"stage '{stage.key}' runs task '{stage.task}', which has no labels to allow", ("allow",), "drop 'allow'"
    if stage.allow == "seen":
        return None
    for label, allowed in stage.allow.items():
        if label not in upstream.labels:
            message = f"stage '{stage.key}' allows labels after '{label}', which '{stage.after}' does not have"
            return message, ("allow", label), f"its labels are {_some(upstream.labels)}"
        unknown = [name for name in allowed if name not in names]
        if unknown:
            message = f"stage '{stage.key}' allows '{unknown[0]}' after '{label}', which '{stage.task}' does not answer"
            return message, ("allow", label), f"{'its span types' if mine.spans else 'its labels'} are {_some(names)}"
        if not allowed and not mine.spans:
            message = f"stage '{stage.key}' allows no label after '{label}': a {stage.task} answer needs one"
            return message, ("allow", label), "list at least one, or leave the label out (it then allows every one)"
    return None


def _some(names: list[str]) -> str:
    """Up to ten names, for a fix."""
    return f"{names[:10]}{' ...' if len(names) > 10 else ''}"


def label_problem(stage: StageSpec, labels: list[str]) -> Problem | None:
    """A condition of ``stage`` on a label its upstream task does not have (``labels``: that task's labels).

    Example:
        >>> stage = StageSpec(task="slots", after="intent", when={"labels": ["Nope"]})
        >>> label_problem(stage, ["PlayMusic"])[0]
        "stage 'slots' routes on label 'Nope', which 'intent' does not have"
    """
    if stage.when is None or stage.when.labels is None:
        return None
    unknown = [label for label in stage.when.labels if label not in labels]
    if unknown:
        return (
            f"stage '{stage.key}' routes on label '{unknown[0]}', which '{stage.after}' does not have",
            ("when", "labels"),
            f"its labels are {_some(labels)}",
        )
    return None


def rebased_json(flows: list[FlowSpec], old: str | Path | None, new: str | Path) -> list[dict[str, Any]]:
    """:func:`rebased`, as a manifest keeps flows (JSON, defaults left out).

    Example:
        >>> rebased_json([FlowSpec.model_validate({"name": "f", "stages": [{"task": "t"}]})], None, ".")
        [{'name': 'f', 'stages': [{'task': 't'}]}]
    """
    return [flow.model_dump(mode="json", exclude_defaults=True) for flow in rebased(flows, old, new)]


def rebased(flows: list[FlowSpec], old: str | Path | None, new: str | Path) -> list[FlowSpec]:
    """``flows`` for a copy of their chain written to folder ``new``: a stage's relative ``chain:`` folder was read
    from ``old`` (None: the working directory) and is rewritten to name the same folder from ``new``; absolute ones
    stay.

    Example:
        >>> flow = FlowSpec.model_validate({"name": "f", "stages": [{"task": "t", "chain": "../other"}]})
        >>> rebased([flow], "/work/chains/mine", "/work/exports/mine")[0].stages[0].chain
        '../../chains/other'
    """
    old_base = Path(old).absolute() if old is not None else Path.cwd()
    new_base = Path(new).absolute()
    out = []
    for flow in flows:
        stages = []
        for stage in flow.stages:
            if stage.chain is not None and not Path(stage.chain).is_absolute():
                target = os.path.normpath(old_base / stage.chain)
                stage = stage.model_copy(update={"chain": os.path.relpath(target, os.path.normpath(new_base))})
            stages.append(stage)
        out.append(flow.model_copy(update={"stages": stages}))
    return out
