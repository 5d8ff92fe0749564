"""The front door: a :class:`Chain` trains, predicts, scores, embeds, saves and loads.

It puts the parts together without doing their work: the network is a :class:`~finechain.model.ChainModel`, text
becomes predictions in the :class:`~finechain.inference.Engine`, training is ``finechain.train``, folders are read
and written by ``finechain.model.artifact``. What it adds is the account of each task (its :class:`TaskRecord`:
how it was trained, on what, how it scored) that the manifest keeps.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finechain.data.prepare import TaskData, load_task_data, task_data_from_lists
from finechain.errors import DataError, FinechainError, SpecError
from finechain.flows.flow import Flow, saved_flow, stage_engines
from finechain.flows.routing import fill_seen
from finechain.heads import Prediction, head_type
from finechain.inference import Engine
from finechain.model.artifact import TaskRecord, TrunkEntry, load_chain, save_chain
from finechain.model.chain_model import ChainModel
from finechain.model.device import pick_device
from finechain.model.task import TaskModel
from finechain.spec import DEFAULT_BACKBONE, JointConfig, TaskSpec, TrainingConfig
from finechain.spec.flows import FlowSpec, rebased, rebased_json
from finechain.train.fit import FitResult, fit_task
from finechain.train.joint import fit_joint

PRUNING_SAMPLE = 512  # training texts per task a narrowed student's feed-forward neurons and heads are ranked on (Chain.distil)


def open_engine(folder: Path) -> Engine:
    """The engine of a saved chain a flow stage names: a chain folder (PyTorch) or an exported one (ONNX Runtime).

    Example:
        >>> open_engine(Path("sentiment-chain")).model.tasks  # doctest: +SKIP
    """
    from finechain.inference.exported import ExportedChain, is_exported

    return Engine(ExportedChain(folder)) if is_exported(folder) else Chain.from_pretrained(folder, device="auto").engine


def _headline(scores: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics only (per-class tables live in the reports)."""
    return {k: round(v, 6) for k, v in scores.items() if isinstance(v, float)} | {"n": scores.get("n", 0)}


class Chain:
    """One pretrained encoder split into a shared trunk and per-task tails: train tasks, predict all of them in one
    trunk pass, save and load.

    Example:
        >>> chain = Chain.from_backbone("all-MiniLM-L6-v2", split="auto")  # doctest: +SKIP
        >>> chain.fit(TaskSpec(name="sentiment", train="sst2.csv"))  # doctest: +SKIP
        >>> chain.predict(["great film"])[0]["sentiment"].label  # doctest: +SKIP
        'positive'
    """

    def __init__(self, model: ChainModel, records: dict[str, TaskRecord] | None = None, trunk: TrunkEntry | None = None) -> None:
        self.model = model
        self.records: dict[str, TaskRecord] = dict(records or {})
        self.trunk_record = trunk
        self.engine = Engine(model)
        self.flows: dict[str, FlowSpec] = {}  # by name, see add_flow
        self.folder: Path | None = None  # where it was loaded from: other chains' folders in flows are relative to it

    def __repr__(self) -> str:
        """What the chain is, in one line: its backbone, split, tasks (with their types) and flows.

        Example:
            >>> Chain.from_backbone("all-MiniLM-L6-v2", split=4)  # doctest: +SKIP
            Chain(backbone='all-MiniLM-L6-v2', split=4 of 6 layers, tasks={}, flows=[])
        """
        tasks = {name: task.head.type_name for name, task in self.tasks.items()}
        return (
            f"Chain(backbone={self.model.backbone.name!r}, split={self.split} of {self.num_layers} layers, tasks={tasks}, "
            f"flows={list(self.flows)})"
        )

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        split: int | str = "auto",
        max_length: int = 128,
        base_dir: Path | None = None,
        sharing: str = "frozen",
    ) -> Chain:
        """A chain with no tasks yet on a packaged backbone, local folder or hub id; ``split="auto"`` picks the
        measured default trunk depth for ``sharing`` (``frozen`` or ``joint``).

        Example:
            >>> Chain.from_backbone(split=6).num_layers  # doctest: +SKIP
            6
        """
        return cls(ChainModel.from_backbone(backbone, split, max_length, base_dir, sharing))

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone_path: str | Path | None = None, device: str = "cpu") -> Chain:
        """Load a saved chain; the backbone is found from the manifest (or ``backbone_path``) and its hash checked.

        Example:
            >>> chain = Chain.from_pretrained("demo-chain")  # doctest: +SKIP
        """
        model, manifest = load_chain(directory, backbone_path)
        chain = cls(model, {name: entry.record() for name, entry in manifest.tasks.items()}, manifest.trunk)
        chain.folder = Path(directory)
        chain.flows = {flow["name"]: FlowSpec.model_validate(flow) for flow in manifest.flows}
        return chain.to(pick_device(device))

    def save_pretrained(self, directory: str | Path, copy_backbone: bool = False, tasks: list[str] | None = None) -> Path:
        """Write the manifest and each task's safetensors (only ``tasks`` when given); the backbone is referenced by
        source and sha256, and copied in only with ``copy_backbone``.

        Example:
            >>> chain.save_pretrained("my-chain")  # doctest: +SKIP
        """
        flows = rebased_json(list(self.flows.values()), self.folder, directory)
        save_chain(
            self.model, directory, records=self.records, trunk=self.trunk_record, copy_backbone=copy_backbone, tasks=tasks, flows=flows
        )
        return Path(directory)

    # flows ----------------------------------------------------------------------------------
    def add_flow(self, flow: FlowSpec | dict[str, Any]) -> Flow:
        """Add (or replace) a flow of this chain's tasks (and of other chains' folders); it is checked against the
        tasks, their labels and span types now, and saved with the chain.

        Example:
            >>> stages = [{"task": "intent"}, {"task": "slots", "after": "intent"}]
            >>> chain.add_flow({"name": "assistant", "stages": stages})  # doctest: +SKIP
        """
        spec = self._seen_filled(flow if isinstance(flow, FlowSpec) else FlowSpec.model_validate(flow))
        built = self._bind(spec)
        self.flows[spec.name] = spec
        return built

    def _seen_filled(self, flow: FlowSpec) -> FlowSpec:
        """``flow`` with each ``allow: seen`` filled in from the training files its tasks were trained from (their
        records); left as it is where a task has none (binding then says what to do)."""
        specs = {name: TaskSpec.model_validate(record.spec) for name, record in self.records.items() if record.spec}
        return fill_seen(flow, specs)

    def flow(self, name: str) -> Flow:
        """The flow called ``name``, ready to ``run`` (other chains it uses are loaded now).

        Example:
            >>> chain.flow("assistant").run(["play some jazz"])[0].path  # doctest: +SKIP
            ['intent', 'slots']
        """
        return saved_flow(name, self.flows, self.engine, self.folder, open_engine)

    def _bind(self, spec: FlowSpec) -> Flow:
        return Flow(spec, {None: self.engine, **stage_engines([spec], self.folder, open_engine)})

    # the parts ------------------------------------------------------------------------------
    @property
    def tasks(self) -> nn.ModuleDict:
        """The task tails by name, in the order they were added."""
        return self.model.tasks

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return self.model.device

    def to(self, device: str | torch.device) -> Chain:
        """Move the model to ``device``; returns the chain."""
        self.model.to(device)
        return self

    @property
    def precision(self) -> str:
        """Inference precision: ``auto`` (bf16 autocast on GPUs and CPUs with native bf16, else fp32), ``fp32``, ``bf16``, ``fp16``."""
        return self.engine.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.engine.precision = value

    @property
    def split(self) -> int:
        """Trunk depth: backbone layers shared by every task."""
        return self.model.split

    @property
    def num_layers(self) -> int:
        """The backbone's layer count."""
        return self.model.num_layers

    @property
    def max_length(self) -> int:
        """Tokens read per text."""
        return self.model.max_length

    def task_names(self, tasks: Sequence[str] | None = None) -> list[str]:
        """``tasks`` checked against this chain (default: all of them)."""
        return self.model.task_names(tasks)

    def attach(self, name: str, task: TaskModel, record: TaskRecord | None = None) -> None:
        """Add (or replace) a task's tail, with its record; no other task is touched."""
        self.model.attach(name, task)
        self.records[name] = record or TaskRecord()

    def remove_task(self, name: str) -> None:
        """Take task ``name`` out of this chain; no other task is touched. Saved over its folder, the chain leaves none
        of the task's files or kept versions there. A flow of this chain with the task as a stage is an error naming
        it: remove the flow first (:meth:`remove_flow`).

        Example:
            >>> chain.remove_task("topic")  # doctest: +SKIP
        """
        self.task_names([name])  # an unknown task is an error listing the chain's tasks
        using = self.flows_using(name)
        if using:
            raise FinechainError(
                f"task '{name}' is a stage of flow '{using[0]}'", fix="remove that flow first (remove-task --with-flows removes both)"
            )
        del self.model.tasks[name]
        self.records.pop(name, None)

    def flows_using(self, name: str) -> list[str]:
        """The flows of this chain that run its task ``name`` as a stage.

        Example:
            >>> chain.flows_using("slots")  # doctest: +SKIP
            ['assistant']
        """
        return [flow.name for flow in self.flows.values() if any(stage.task == name and stage.chain is None for stage in flow.stages)]

    def remove_flow(self, name: str) -> None:
        """Take flow ``name`` out of this chain (its tasks stay).

        Example:
            >>> chain.remove_flow("assistant")  # doctest: +SKIP
        """
        if name not in self.flows:
            raise FinechainError(f"unknown flow '{name}'", fix=f"this chain's flows: {sorted(self.flows) or 'none'}")
        del self.flows[name]

    def merge_adapters(self) -> list[str]:
        """Fold LoRA branches into plain layers (for export, and faster inference); returns the merged tasks."""
        return self.model.merge_adapters()

    # inference ------------------------------------------------------------------------------
    def predict(self, texts: Any, tasks: Sequence[str] | None = None, batch_size: int = 64) -> list[dict[str, Prediction]]:
        """Typed predictions of every requested task (default: all) for every text, one trunk pass per batch.

        Classification gives a ``ClassPrediction`` (label, score, every label's score), multilabel ``LabelsPrediction``,
        regression ``ValuePrediction``, tagging ``EntitiesPrediction`` (entities with character offsets, tags);
        ``.to_dict()`` gives each as JSON.

        Example:
            >>> chain.predict(["great film"], tasks=["sentiment"])[0]["sentiment"].to_dict()  # doctest: +SKIP
            {'label': 'positive', 'score': 0.98, 'scores': {'negative': 0.02, 'positive': 0.98}}
        """
        self.engine.batch_size = batch_size
        return self.engine.predict(texts, tasks)

    def embed(self, texts: Any, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Sentence embeddings from the untouched backbone: trunk + the backbone's upper layers, mean pooled.

        For sentence-transformers backbones such as all-MiniLM-L6-v2 these match ``SentenceTransformer.encode``
        (mean pooling, L2-normalised). Not available once the trunk itself was fine-tuned (``sharing: joint``).

        Example:
            >>> chain.embed(["a cat", "a kitten"]).shape  # doctest: +SKIP
            (2, 384)
        """
        if self.model.trunk_tuned:
            raise FinechainError(
                "this chain's trunk was fine-tuned (sharing: joint), so it no longer gives the backbone's embeddings",
                fix="embed with Chain.from_backbone(...) or a chain trained with sharing: frozen",
            )
        self.engine.batch_size = batch_size
        return self.engine.embed(texts, normalize)

    def score(self, task: str, texts: Any, labels: Sequence[Any]) -> dict[str, Any]:
        """Metrics of ``task`` on labelled texts, labels read and checked like training data (a label never seen in
        training is a :class:`DataError` naming the item, ``labels[3]``). Tagging takes word lists with one tag per
        word, or raw strings with ``[start, end, type]`` entity spans (or one tag per word as :func:`split_words` cuts them).

        Example:
            >>> chain.score("sentiment", ["great"], ["positive"])["accuracy"]  # doctest: +SKIP
            1.0
        """
        return self.engine.score(task, texts, labels)

    # training -------------------------------------------------------------------------------
    def _attach_result(self, spec: TaskSpec, result: FitResult, data: TaskData) -> FitResult:
        """Attach a trained tail, score the test split, and record how it was trained and how it scored."""
        assert result.tail is not None and result.training is not None
        self.model.attach(spec.name, result.tail)
        result.test = self.score(spec.name, data.test.texts, data.test.labels) if data.test is not None else None
        metrics = {
            **({"validation": _headline(result.validation)} if result.validation else {}),  # none: no dev data and no cut
            **({"test": _headline(result.test)} if result.test else {}),
        }
        self.records[spec.name] = TaskRecord(
            metric=result.metric,
            best_epoch=result.best_epoch,
            training=result.training.model_dump(),
            data={**data.provenance, **result.provenance},
            spec=spec.model_dump(mode="json"),
            metrics=metrics,
            train_seconds=round(result.train_seconds, 3),
        )
        return result

    def fit(
        self,
        spec: TaskSpec,
        training: TrainingConfig | None = None,
        *,
        texts: list[Any] | None = None,
        labels: list[Any] | None = None,
        dev: tuple[list[Any], list[Any]] | None = None,
        test: tuple[list[Any], list[Any]] | None = None,
        data: TaskData | None = None,
        **options: Any,
    ) -> FitResult:
        """Train the task described by ``spec`` on this chain's trunk and attach it.

        The data comes from the spec's files, from ``texts`` and ``labels`` in memory (with optional ``dev`` and
        ``test`` as ``(texts, labels)``; without ``dev`` a validation split is cut from them), or ready as ``data``.
        Tagging takes word lists and BIO tag lists. ``options`` go to :func:`finechain.train.fit.fit_task`
        (``run_dir``, ``resume``, ``progress``, ``hooks``, ``objective``, ``features``).

        Example:
            >>> chain.fit(TaskSpec(name="sentiment", train="sst2.csv"))  # doctest: +SKIP
            >>> chain.fit(TaskSpec(name="topic"), texts=["stocks fell", "late goal"], labels=["business", "sport"])  # doctest: +SKIP
        """
        training = training or TrainingConfig()
        seed = spec.training.apply(training).seed
        if texts is not None or labels is not None:
            if texts is None or labels is None:
                raise DataError("pass both texts= and labels=", fix="give one label per text")
            if spec.train is not None:
                raise SpecError(f"task '{spec.name}' has both a train file and texts=", fix="drop one of them")
            data = task_data_from_lists(spec, list(texts), list(labels), dev=dev, test=test, seed=seed)
        elif dev is not None or test is not None:
            raise SpecError("dev= and test= go with texts= and labels=", fix="for files, set the spec's dev and test paths")
        data = data or load_task_data(spec, head_type(spec.type), seed)
        return self._attach_result(spec, fit_task(self.model, spec, training, data=data, **options), data)

    def fit_joint(
        self,
        specs: list[TaskSpec],
        training: TrainingConfig | None = None,
        joint: JointConfig | None = None,
        *,
        data: dict[str, TaskData | tuple[list[Any], list[Any]]] | None = None,
        **options: Any,
    ) -> dict[str, FitResult]:
        """Train several tasks together with this chain's trunk (``sharing: joint``), then refine each branch.

        Each task's data comes from its spec's files, or from ``data[name]``: ``(texts, labels)`` or a
        :class:`~finechain.data.prepare.TaskData`. Every task's data is read and checked before training starts.
        ``options`` go to :func:`finechain.train.joint.fit_joint` (``run_dir``, ``resume``, ``progress``, ``hooks``).

        Example:
            >>> chain = Chain.from_backbone(split="auto", sharing="joint")  # doctest: +SKIP
            >>> specs = [TaskSpec(name="topic", train="topics.csv"), TaskSpec(name="mood")]  # doctest: +SKIP
            >>> results = chain.fit_joint(specs, data={"mood": (texts, labels)})  # doctest: +SKIP
        """
        training = training or TrainingConfig()
        # the trunk is selected on every task's validation data: cut one from small data too, unless a spec says otherwise
        specs = [s if s.min_validation is not None else s.model_copy(update={"min_validation": 0}) for s in specs]
        given = data or {}
        unknown = sorted(set(given) - {s.name for s in specs})
        if unknown:
            raise SpecError(f"data for unknown tasks {unknown}", fix=f"the tasks are {[s.name for s in specs]}")
        datas: dict[str, TaskData] = {}
        for spec in specs:
            seed = spec.training.apply(training).seed
            item = given.get(spec.name)
            if isinstance(item, tuple):
                datas[spec.name] = task_data_from_lists(spec, list(item[0]), list(item[1]), seed=seed)
            else:
                datas[spec.name] = item if item is not None else load_task_data(spec, head_type(spec.type), seed)
        result = fit_joint(self.model, specs, datas, training, joint or JointConfig(), **options)
        self.trunk_record = TrunkEntry(**result.trunk)
        return {spec.name: self._attach_result(spec, result.results[spec.name], datas[spec.name]) for spec in specs}

    def distil(
        self,
        trunk_layers: int,
        branch_layers: int,
        *,
        task_branch_layers: Mapping[str, int] | None = None,
        texts: Sequence[str] = (),
        data: dict[str, TaskData] | None = None,
        training: TrainingConfig | None = None,
        ffn_width: float | None = None,
        attention_heads: int | None = None,
        task_ffn_width: Mapping[str, float] | None = None,
        task_attention_heads: Mapping[str, int] | None = None,
        **options: Any,
    ) -> Chain:
        """A smaller chain trained on this one's outputs: ``trunk_layers`` trunk layers and ``branch_layers`` per task
        branch (or the number ``task_branch_layers`` gives a task), each started from this chain's layer at the same
        relative depth, then distilled over every task's training texts (read again from the files its record names,
        or given as ``data``) and the unlabelled ``texts``. With ``ffn_width`` (a share, 0 < share <= 1) each student
        layer keeps that share of its feed-forward neurons, and with ``attention_heads`` that many of its attention
        heads, those its teacher layer uses most on up to 512 training texts per task (structured pruning, before
        distillation); ``task_ffn_width`` and ``task_attention_heads`` narrow the branches of the tasks they name
        further (a share of the teacher's neurons, a number of heads; at most the trunk's). ``options`` go to
        :func:`finechain.train.distill.distill` (``epochs``, ``temperature``, ``hard_weight``, ``hidden_weight``,
        ``trunk_learning_rate``, ``run_dir``, ``resume``, ``progress``, ``hooks``).

        Example:
            >>> student = Chain.from_pretrained("my-chain").distil(3, 1)  # doctest: +SKIP
            >>> student.save_pretrained("my-chain-small")  # doctest: +SKIP
            >>> lean = Chain.from_pretrained("my-chain").distil(3, 0, task_branch_layers={"intent": 1})  # doctest: +SKIP
            >>> narrow = Chain.from_pretrained("my-chain").distil(3, 1, ffn_width=0.75)  # doctest: +SKIP
            >>> fewer_heads = Chain.from_pretrained("my-chain").distil(3, 1, ffn_width=0.875, attention_heads=10)  # doctest: +SKIP
            >>> per_task = Chain.from_pretrained("my-chain").distil(3, 1, ffn_width=0.875, task_ffn_width={"intent": 0.5})  # doctest: +SKIP
        """
        from finechain.model.student import check_heads, ffn_neurons, layer_activity, student_of
        from finechain.train.distill import distill

        if not self.tasks:
            raise FinechainError("this chain has no tasks to distil", fix="train a task first")
        specs, datas = self._training_data(data or {})
        first = self.records[specs[0].name].training or {}
        training = training or TrainingConfig(seed=first.get("seed", 13))
        width = None if ffn_width is None else ffn_neurons(self.model, ffn_width)
        task_width = {name: ffn_neurons(self.model, share) for name, share in (task_ffn_width or {}).items()}
        task_heads = dict(task_attention_heads or {})
        for heads in (attention_heads, *task_heads.values()):
            if heads is not None:
                check_heads(self.model, heads)
        activity = None
        if (
            width is not None or attention_heads is not None or task_width or task_heads
        ):  # each task's branch ranked on its own training texts, the trunk on all
            rng = random.Random(training.seed)
            own = {spec.name: datas[spec.name].train.texts for spec in specs}
            ids = {name: self.model.encode(rng.sample(rows, min(len(rows), PRUNING_SAMPLE)))[0] for name, rows in own.items()}
            activity = layer_activity(self.model, ids, training.eval_batch_size)
        student = Chain(
            student_of(
                self.model,
                trunk_layers,
                branch_layers,
                task_branch_layers,
                width,
                activity,
                attention_heads,
                task_ffn_width=task_width,
                task_heads=task_heads,
            )
        )
        student.flows = {flow.name: flow for flow in rebased(list(self.flows.values()), self.folder, Path.cwd())}  # same tasks
        trunk, results = distill(self.model, student.model, specs, datas, training, texts=texts, **options)
        student.trunk_record = TrunkEntry(**trunk)
        student.model.compression = {
            **(student.model.compression or {}),
            **trunk["distillation"],
            "epochs": trunk["epochs"],
            "best_epoch": trunk["best_epoch"],
            "seconds": trunk["seconds"],
        }
        for spec in specs:
            student._attach_result(spec, results[spec.name], datas[spec.name])
        return student

    def _training_data(self, given: dict[str, TaskData]) -> tuple[list[TaskSpec], dict[str, TaskData]]:
        """Every task's spec and data as it was trained: ``given[name]``, or read again from its recorded files."""
        specs, datas = [], {}
        for name in self.tasks:
            record = self.records.get(name)
            if record is None or record.spec is None:
                raise FinechainError(f"task '{name}' has no record of its training data", fix="pass its data (data={name: ...})")
            spec = TaskSpec.model_validate(record.spec)
            specs.append(spec)
            if name in given:
                datas[name] = given[name]
                continue
            if spec.train is None:
                raise FinechainError(
                    f"task '{name}' was trained on data in memory, which the chain does not keep", fix=f"pass it (data={{'{name}': ...}})"
                )
            seed = (record.training or {}).get("seed", 13)
            datas[name] = load_task_data(spec, head_type(spec.type), seed)  # a missing file is a one-line DataError
        return specs, datas
