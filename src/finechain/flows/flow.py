"""Run a flow (``finechain.spec.flows``) on texts: stages in graph order, each on the texts (or spans) that reach it.

Sharing: the stages that read the text run on their chain's :class:`~finechain.inference.Engine` with one trunk pass
per text and chain, whatever the graph. On a PyTorch chain the pass keeps its trunk states: the stages that read every
text (no ``after``) run in it, and a stage reached later (a route, a stage after another) runs only its branch, only on
the texts that reach it, on the kept states. An exported chain (one ONNX graph) cannot keep them, so its one pass runs
every text stage's branch on every text, and a routed stage's answer is kept only where the route holds. A chain
that holds only routed stages (a fallback in another chain) runs only on the texts routed to it. A stage that reads
spans runs on new inputs (the span's words, or the text with the span marked), so it takes its own pass over them.
A stage with ``allow`` is answered after its upstream stage, among the labels that stage's answer allows: on the kept
states where the chain keeps them, else (one ONNX graph, a served flow) in a pass of its own.
Texts run in blocks of at most :attr:`Flow.block` texts and :attr:`Flow.block_chars` characters, so the kept states
of a long list never all sit in memory at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from finechain.data.inputs import size_blocks
from finechain.data.tokens import Encoded
from finechain.errors import FinechainError
from finechain.heads import Prediction
from finechain.heads.predictions import Entity
from finechain.inference.engine import Engine, Kept, Prepared, Row
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


def routes_to(spec: FlowSpec, stage: StageSpec, upstream: Prediction | list[SpanAnswer] | None) -> bool:
    """Whether the upstream stage's answer sends a text to ``stage`` of flow ``spec``: its ``when`` holds, or for the
    default route (``otherwise``) no sibling's label route holds (score-only fallbacks do not count); a stage without
    a condition gets every text its upstream stage answered.

    Example:
        >>> from finechain.heads.predictions import ClassPrediction
        >>> spec = FlowSpec.model_validate({"name": "f", "stages": [{"task": "a"},
        ...     {"task": "b", "after": "a", "when": {"labels": ["x"]}}, {"task": "c", "after": "a", "otherwise": True}]})
        >>> [routes_to(spec, spec.stages[i], ClassPrediction("y", 0.9, {})) for i in (1, 2)]
        [False, True]
    """
    if isinstance(upstream, list) or upstream is None:
        return upstream is not None  # spans or text after a tagging stage: no condition (checked)
    if stage.when is not None:
        return holds(stage.when, upstream)
    if stage.otherwise:
        routes = [s.when for s in spec.children(stage.after) if s.when is not None and s.when.labels is not None]
        return not any(holds(when, upstream) for when in routes)
    return True


def allowed_after(stage: StageSpec, upstream: Prediction | list[SpanAnswer] | None) -> set[str] | None:
    """What ``stage`` may answer after its upstream stage gave ``upstream`` (the stage's ``allow``): the names listed
    for the answer's label (a multi-label answer: for any of its labels); None, anything, when the stage has no
    ``allow`` or the answer has a label it does not list (or none).

    Example:
        >>> from finechain.heads.predictions import ClassPrediction
        >>> stage = StageSpec(task="slots", after="intent", allow={"PlayMusic": ["artist", "playlist"]})
        >>> sorted(allowed_after(stage, ClassPrediction("PlayMusic", 0.9, {}))), allowed_after(stage, ClassPrediction("Other", 0.9, {}))
        (['artist', 'playlist'], None)
    """
    if not isinstance(stage.allow, dict) or upstream is None or isinstance(upstream, list) or not upstream.counted():
        return None
    names: set[str] = set()
    for label in upstream.counted():
        if label not in stage.allow:
            return None
        names.update(stage.allow[label])
    return names


def marked(text: str, span: Entity) -> str:
    """``text`` with ``span`` wrapped in brackets, the input of an ``input: marked`` stage.

    Example:
        >>> marked("I like Apple phones", Entity("ORG", 0.9, "Apple", start=7, end=12))
        'I like [Apple] phones'
    """
    if span.start is None or span.end is None:
        return span.text or ""
    return f"{text[: span.start]}{MARK_OPEN}{text[span.start : span.end]}{MARK_CLOSE}{text[span.end :]}"


@dataclass
class _Pass:
    """One trunk pass of a chain over some texts: what was prepared, the rows that ran, and their kept states."""

    prepared: Prepared
    rows: list[Row]
    kept: Kept


@dataclass
class _ChainState:
    """What a chain has answered in one block of a flow run: per text its answers by task, and the pass that holds
    its trunk states (with the text's position in it)."""

    answers: dict[int, dict[str, Prediction]] = field(default_factory=dict)
    passes: dict[int, tuple[_Pass, int]] = field(default_factory=dict)


class Flow:
    """A flow bound to engines: ``engines[None]`` runs this chain's stages, ``engines[folder]`` those of the stages
    with ``chain: folder``. Checked on construction: every stage's task exists, span edges start at span-producing
    tasks, routing conditions name labels the upstream task has. With ``only``, just those stages run (routes are
    still decided by the whole flow's conditions): how a routed stage finds the rows it will be sent before its own
    task is trained.

    Example:
        >>> flow = Flow(spec, {None: chain.engine})  # doctest: +SKIP
        >>> flow.run(["play some jazz"])[0].path  # doctest: +SKIP
        ['intent', 'slots']
    """

    def __init__(self, spec: FlowSpec, engines: Mapping[str | None, Engine], only: set[str] | None = None) -> None:
        self.spec, self.engines = spec, dict(engines)
        self.order = [stage for stage in _graph_order(spec) if only is None or stage.key in only]  # ``only``: these stages run
        for stage in self.order:
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
        if problem is None and stage.allow == "seen":
            problem = (
                f"stage '{stage.key}' has 'allow: seen', which is filled in from the training files of its task and the one it reads",
                ("allow",),
                "those of this chain's tasks trained from files fill it in (chain.add_flow, finechain add-flow); else list "
                "them: allow: {upstream label: [labels]}",
            )
        if problem is not None:  # field: where in the flow, stages.<index>.<key>..., for a caller that holds its file
            where = ".".join(map(str, ("stages", self.spec.stages.index(stage), *problem[1])))
            raise FinechainError(f"flow '{self.name}': {problem[0]}", fix=problem[2], field=where)

    block = 1024  # texts per block: the kept trunk states of one block are in memory at a time
    block_chars = 1 << 18  # and characters (a long text keeps the states of all its windows)

    def run(self, texts: Sequence[Any]) -> list[FlowResult]:
        """Every text through the flow; one :class:`FlowResult` per text (``times_ms``: each stage's time for the
        whole call)."""
        texts = list(texts)
        results: list[FlowResult] = []
        times: dict[str, float] = {stage.key: 0.0 for stage in self.order}
        for block in size_blocks(texts, self.block_chars, self.block):
            results += self._run_block(texts[block], times)
        for result in results:
            result.times_ms = {key: round(1000 * value, 3) for key, value in times.items()}
        return results

    def _run_block(self, texts: list[Any], times: dict[str, float]) -> list[FlowResult]:
        """One block of texts through every stage in graph order; each stage's seconds added to ``times``."""
        results = [FlowResult(text) for text in texts]
        reached: dict[str, list[int]] = {}
        states = {key: _ChainState() for key in self.engines}
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
                self._run_text(stage, texts, results, rows, states[stage.chain])
            times[stage.key] += time.perf_counter() - started
        return results

    def _routed(self, stage: StageSpec, result: FlowResult) -> bool:
        """Whether ``result``'s upstream answer sends it to ``stage``."""
        return routes_to(self.spec, stage, result.answers.get(stage.after or ""))

    def _run_text(self, stage: StageSpec, texts: list[Any], results: list[FlowResult], rows: list[int], state: _ChainState) -> None:
        """Answer ``stage`` for ``rows``: from the chain's kept trunk states where a pass ran, else in a new pass."""
        if stage.allow is not None:
            self._run_allowed(stage, texts, results, rows, state)
            return
        engine = self.engines[stage.chain]
        need = [i for i in rows if stage.task not in state.answers.get(i, {})]
        fresh = need
        if engine.keeps_states:
            found, again = self._from_kept(stage.task, engine, texts, [i for i in need if i in state.passes], state)
            for i, answer in found.items():
                state.answers.setdefault(i, {})[stage.task] = answer
            if again:  # long texts a token-level stage reads through windows: a pass of their own, for this task
                for i, answers in zip(again, engine.predict([texts[i] for i in again], [stage.task]), strict=True):
                    state.answers[i].update(answers)
            fresh = [i for i in need if i not in state.passes]
        if fresh:
            self._first_pass(stage, engine, texts, fresh, state)
        for i in rows:
            results[i].answers[stage.key] = state.answers[i][stage.task]
            results[i].path.append(stage.key)

    def _run_allowed(self, stage: StageSpec, texts: list[Any], results: list[FlowResult], rows: list[int], state: _ChainState) -> None:
        """Answer a stage with ``allow`` for ``rows``, each chosen among what its upstream answer allows: on the kept
        trunk states (its branch only) where the chain keeps them, else in a pass of its own. These answers are the
        stage's alone (another stage of the same task answers unrestricted)."""
        engine = self.engines[stage.chain]
        allowed = {i: allowed_after(stage, results[i].answers.get(stage.after or "")) for i in rows}
        again, found = rows, {}
        if engine.keeps_states:
            fresh = [i for i in rows if i not in state.passes]
            if fresh:  # no pass of this chain yet (its upstream stage is another chain's): one that keeps the states
                self._first_pass(stage, engine, texts, fresh, state)
            found, again = self._from_kept(stage.task, engine, texts, rows, state, allowed)
        if again:
            choices = {stage.task: [allowed[i] for i in again]}
            for i, answers in zip(again, engine.predict([texts[i] for i in again], [stage.task], choices), strict=True):
                found[i] = answers[stage.task]
        for i in rows:
            results[i].answers[stage.key] = found[i]
            results[i].path.append(stage.key)

    def _first_pass(self, stage: StageSpec, engine: Engine, texts: list[Any], fresh: list[int], state: _ChainState) -> None:
        """A trunk pass over ``fresh`` texts: with kept states, ``stage`` and the chain's stages that read every text
        (the rest later, on the states); else every text stage of the chain at once (but those with ``allow``, which
        need their upstream answers first: they take a pass of their own)."""
        running = {s.key for s in self.order}
        text_stages = [s for s in self.spec.stages if s.key in running and s.chain == stage.chain and s.input == "text"]
        chain_tasks = list(dict.fromkeys(s.task for s in text_stages))
        if not engine.keeps_states:
            plain = list(dict.fromkeys(s.task for s in text_stages if s.allow is None))
            for i, answers in zip(fresh, engine.predict([texts[i] for i in fresh], plain), strict=True):
                state.answers.setdefault(i, {}).update(answers)
            return
        own = [stage.task] if stage.allow is None else []  # a stage with `allow` is answered on the kept states
        eager = tuple(dict.fromkeys(own + [s.task for s in text_stages if s.after is None]))
        prepared = engine.prepare([texts[i] for i in fresh], chain_tasks)
        first = [Row(row.ids, tuple(t for t in row.tasks if t in eager)) for row in prepared.rows]
        kept = Kept()
        outputs = engine.forward(first, kept=kept)
        view = replace(prepared, tasks=eager, rows=first)  # decode what ran: the eager tasks
        done = _Pass(prepared, first, kept)
        for position, (i, answers) in enumerate(zip(fresh, engine.decode(view, outputs), strict=True)):
            state.answers.setdefault(i, {}).update(answers)
            state.passes[i] = (done, position)

    def _from_kept(
        self,
        task: str,
        engine: Engine,
        texts: list[Any],
        kept_rows: list[int],
        state: _ChainState,
        allowed: Mapping[int, set[str] | None] | None = None,
    ) -> tuple[dict[int, Prediction], list[int]]:
        """Answer ``task`` for ``kept_rows`` on their kept trunk states (its branch only), each among its ``allowed``
        labels if given; returns the answers, and the texts that need a pass of their own instead (long texts that a
        token-level task reads through windows)."""
        token_level = engine.model.tasks[task].head.token_level
        found: dict[int, Prediction] = {}
        again: list[int] = []
        by_pass: dict[int, tuple[_Pass, list[tuple[int, int]]]] = {}
        for i in kept_rows:
            done, position = state.passes[i]
            if token_level and position in done.prepared.long:
                again.append(i)
            else:
                by_pass.setdefault(id(done), (done, []))[1].append((i, position))
        for done, members in by_pass.values():
            positions = [position for _, position in members]
            outputs = engine.forward_kept(done.rows, done.kept, {position: (task,) for position in positions})
            words = done.prepared.words
            if words is not None:
                spans = None if words.word_spans is None else [words.word_spans[p] for p in positions]
                words = Encoded([words.ids[p] for p in positions], [words.word_starts[p] for p in positions], spans)
            view = Prepared([done.prepared.texts[p] for p in positions], (task,), [done.rows[p] for p in positions], words)
            choices = None if allowed is None else {task: [allowed[i] for i, _ in members]}
            for (i, _), answers in zip(members, engine.decode(view, [outputs.get(p, {}) for p in positions], choices), strict=True):
                found[i] = answers[task]
        return found, again

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


def stage_engines(flows: Iterable[FlowSpec], base: Path | None, open_folder: Callable[[Path], Engine]) -> dict[str, Engine]:
    """The engines of the other chains ``flows``' stages name (``chain:``), each opened once with ``open_folder``; a
    relative folder is read from ``base``, the folder of the chain that holds the flows (None: the working directory).

    Example:
        >>> stage_engines([], None, lambda path: None)
        {}
    """
    engines: dict[str, Engine] = {}
    for flow in flows:
        for stage in flow.stages:
            if stage.chain is None or stage.chain in engines:
                continue
            path = Path(stage.chain)
            if not path.is_absolute() and base is not None:
                path = base / path
            if not path.is_dir():
                fix = "train it, or fix the stage's 'chain:'"
                raise FinechainError(f"flow '{flow.name}': the chain folder {path} is not there", file=path, fix=fix)
            engines[stage.chain] = open_folder(path)
    return engines


def saved_flow(name: str, flows: Mapping[str, FlowSpec], engine: Engine, base: Path | None, open_folder: Callable[[Path], Engine]) -> Flow:
    """The flow called ``name`` of a chain whose ``engine`` runs its own stages and whose ``flows`` are saved with it
    (a chain folder's or an exported folder's), bound and ready to ``run``; other chains it names are opened now.

    Example:
        >>> saved_flow("nope", {}, engine, None, open_engine)  # doctest: +SKIP
        FinechainError: unknown flow 'nope' (fix: this chain's flows: none (add one under 'flows:' in the spec))
    """
    if name not in flows:
        known = sorted(flows) or "none"
        raise FinechainError(f"unknown flow '{name}'", fix=f"this chain's flows: {known} (add one under 'flows:' in the spec)")
    spec = flows[name]
    return Flow(spec, {None: engine, **stage_engines([spec], base, open_folder)})


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
