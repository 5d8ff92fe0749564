"""Run a flow (``finechain.spec.flows``) on texts: stages in graph order, each on the texts (or spans) that reach it.

Sharing: every stage that reads the text runs on its chain's :class:`~finechain.inference.Engine` together with the
chain's other text stages, in one pass (one trunk pass per text and chain, whatever the graph). A routed stage
therefore costs its branch on every text that reaches its chain, and its answer is kept only where the route holds:
branches are cheap next to the trunk, and a second trunk pass for the routed texts would cost more. A chain that
holds only routed stages (a fallback in another chain) runs only on the texts routed to it. A stage that reads spans
runs on new inputs (the span's words, or the text with the span marked), so it takes its own pass over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finechain.errors import FinechainError
from finechain.heads import Prediction
from finechain.heads.predictions import Entity
from finechain.inference.engine import Engine
from finechain.spec.flows import SPAN_INPUTS, Condition, FlowSpec, StageSpec, TaskFacts, flow_problem, stage_problem

MARK_OPEN, MARK_CLOSE = "[", "]"  # how ``input: marked`` wraps the span in its text


@dataclass(frozen=True)
class SpanAnswer:
    """A span-reading stage's answer for one span of the upstream stage."""

    span: Entity
    answer: Prediction

    def to_dict(self) -> dict[str, Any]:
        """``{"span": {...}, **answer}``."""
        return {"span": self.span.to_dict(), **self.answer.to_dict()}


@dataclass
class FlowResult:
    """One input's trip through a flow: each stage's answer (a prediction, or per span a :class:`SpanAnswer`), the
    stages that ran in order (``path``), and the milliseconds each stage's step took for the whole call.

    Example:
        >>> FlowResult("hi", {"intent": ClassPrediction("greet", 0.9, {})}, ["intent"], {"intent": 3.2}).to_dict()["path"]  # doctest: +SKIP
        ['intent']
    """

    text: Any
    answers: dict[str, Prediction | list[SpanAnswer]] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    times_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"text", "answers": {stage: ...}, "path", "times_ms"}``."""
        answers = {key: [a.to_dict() for a in value] if isinstance(value, list) else value.to_dict() for key, value in self.answers.items()}
        return {"text": self.text, "answers": answers, "path": list(self.path), "times_ms": dict(self.times_ms)}


def holds(condition: Condition, answer: Prediction) -> bool:
    """Whether ``answer`` meets ``condition`` (every test given must hold).

    Example:
        >>> from finechain.heads.predictions import ClassPrediction
        >>> answer = ClassPrediction("a", 0.7, {})
        >>> holds(Condition(labels=["a"], score_at_least=0.5), answer), holds(Condition(score_below=0.5), answer)
        (True, False)
    """
    if condition.labels is not None and not set(answer.counted()) & set(condition.labels):
        return False
    confidence = answer.confidence()
    if condition.score_at_least is not None and (confidence is None or confidence < condition.score_at_least):
        return False
    return not (condition.score_below is not None and (confidence is None or confidence >= condition.score_below))


def marked(text: str, span: Entity) -> str:
    """``text`` with ``span`` wrapped in brackets, the input of an ``input: marked`` stage.

    Example:
        >>> marked("I like Apple phones", Entity("ORG", 0.9, "Apple", start=7, end=12))
        'I like [Apple] phones'
    """
    if span.start is None or span.end is None:
        return span.text or ""
    return f"{text[: span.start]}{MARK_OPEN}{text[span.start : span.end]}{MARK_CLOSE}{text[span.end :]}"


class Flow:
    """A flow bound to engines: ``engines[None]`` runs this chain's stages, ``engines[folder]`` those of the stages
    with ``chain: folder``. Checked on construction: every stage's task exists, span edges start at span-producing
    tasks, routing conditions name labels the upstream task has.

    Example:
        >>> flow = Flow(spec, {None: chain.engine})  # doctest: +SKIP
        >>> flow.run(["play some jazz"])[0].path  # doctest: +SKIP
        ['intent', 'slots']
    """

    def __init__(self, spec: FlowSpec, engines: Mapping[str | None, Engine]) -> None:
        self.spec, self.engines = spec, dict(engines)
        self.order = _graph_order(spec)
        for stage in spec.stages:
            self._check(stage)

    @property
    def name(self) -> str:
        """The flow's name."""
        return self.spec.name

    def facts(self, stage: StageSpec) -> TaskFacts | None:
        """What the flow needs to know of ``stage``'s task (None if its chain does not have it)."""
        engine = self.engines.get(stage.chain)
        if engine is None or stage.task not in engine.model.tasks:
            return None
        head = engine.model.tasks[stage.task].head
        return TaskFacts(head.token_level, head.routes_on_labels, list(head.labels), head.span_types())

    def _check(self, stage: StageSpec) -> None:
        problem = stage_problem(self.spec, stage, self.facts)
        if problem is not None:
            raise FinechainError(f"flow '{self.name}': {problem[0]}", fix=problem[2])

    def run(self, texts: Sequence[Any]) -> list[FlowResult]:
        """Every text through the flow; one :class:`FlowResult` per text."""
        texts = list(texts)
        results = [FlowResult(text) for text in texts]
        reached: dict[str, list[int]] = {}
        cache: dict[str | None, dict[int, dict[str, Prediction]]] = {key: {} for key in self.engines}
        times: dict[str, float] = {}
        for stage in self.order:
            started = time.perf_counter()
            if stage.after is None:
                rows = list(range(len(texts)))
            else:
                rows = [i for i in reached.get(stage.after, []) if self._routed(stage, results[i])]
            reached[stage.key] = rows
            if stage.input in SPAN_INPUTS:
                self._run_spans(stage, texts, results, rows)
            else:
                self._run_text(stage, texts, results, rows, cache[stage.chain])
            times[stage.key] = round(1000 * (time.perf_counter() - started), 3)
        for result in results:
            result.times_ms = dict(times)
        return results

    def _routed(self, stage: StageSpec, result: FlowResult) -> bool:
        """Whether ``result``'s upstream answer sends it to ``stage``."""
        upstream = result.answers.get(stage.after or "")
        if isinstance(upstream, list) or upstream is None:
            return upstream is not None  # spans or text after a tagging stage: no condition (checked)
        if stage.when is not None:
            return holds(stage.when, upstream)
        if stage.otherwise:  # the default route: no sibling's label route held (score-only fallbacks do not count)
            routes = [s.when for s in self.spec.children(stage.after) if s.when is not None and s.when.labels is not None]
            return not any(holds(when, upstream) for when in routes)
        return True

    def _run_text(
        self, stage: StageSpec, texts: list[Any], results: list[FlowResult], rows: list[int], cache: dict[int, dict[str, Prediction]]
    ) -> None:
        """Answer ``stage`` for ``rows`` from the chain's one pass (run now for the rows it has not seen)."""
        missing = [i for i in rows if i not in cache]
        if missing:
            tasks = list(dict.fromkeys(s.task for s in self.spec.stages if s.chain == stage.chain and s.input == "text"))
            for i, answers in zip(missing, self.engines[stage.chain].predict([texts[i] for i in missing], tasks), strict=True):
                cache[i] = answers
        for i in rows:
            results[i].answers[stage.key] = cache[i][stage.task]
            results[i].path.append(stage.key)

    def _run_spans(self, stage: StageSpec, texts: list[Any], results: list[FlowResult], rows: list[int]) -> None:
        """Run ``stage`` on every span of its upstream answer (of ``types``), for all ``rows`` in one pass."""
        owners: list[tuple[int, Entity]] = []
        inputs: list[str] = []
        for i in rows:
            upstream = results[i].answers[stage.after or ""]
            assert not isinstance(upstream, list)
            for span in upstream.spans():
                if stage.types is None or span.type in stage.types:
                    owners.append((i, span))
                    text = texts[i] if isinstance(texts[i], str) else " ".join(texts[i])
                    inputs.append(marked(text, span) if stage.input == "marked" else span.text or "")
        answers = self.engines[stage.chain].predict(inputs, [stage.task]) if inputs else []
        for i in rows:
            results[i].answers[stage.key] = []
            results[i].path.append(stage.key)
        for (i, span), answer in zip(owners, answers, strict=True):
            found = results[i].answers[stage.key]
            assert isinstance(found, list)
            found.append(SpanAnswer(span, answer[stage.task]))


def _graph_order(spec: FlowSpec) -> list[StageSpec]:
    """Stages with each after the one it reads (the spec's order among equals)."""
    problem = flow_problem(spec, set())
    if problem is not None:
        raise FinechainError(f"flow '{spec.name}': {problem[1][0]}", fix=problem[1][2])
    order: list[StageSpec] = []
    placed: set[str | None] = {None}
    while len(order) < len(spec.stages):
        for stage in spec.stages:
            if stage.key not in placed and stage.after in placed:
                order.append(stage)
                placed.add(stage.key)
    return order
