"""The Chain: one frozen trunk shared by many task tails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finechain.data.batching import Encoded, encode, inference_batches, overflow_windows, pad_ids, tokenize
from finechain.data.inputs import as_texts
from finechain.data.tagged import tagged_row
from finechain.data.words import split_words
from finechain.errors import ArtifactError, DataError, FinechainError, InMemory, SpecError
from finechain.io import load_tensors, read_json, save_tensors, write_json
from finechain.model.backbone import (
    DEFAULT_BACKBONE,
    BackboneRef,
    check_max_length,
    load_encoder,
    load_tokenizer,
    locate_backbone,
    resolve_backbone,
)
from finechain.model.branches import branch_mode
from finechain.model.heads import Head
from finechain.model.layers import LayerStack, Trunk, copy_layers
from finechain.model.pooling import Pooling, pool
from finechain.model.precision import autocast_context
from finechain.model.task import TaskModel

if TYPE_CHECKING:
    from finechain.data.prepare import TaskData
    from finechain.spec import JointConfig, TaskSpec, TrainingConfig
    from finechain.train.trainer import FitResult

MANIFEST = "finechain.json"
FORMAT_VERSION = 1
# Share of the backbone's layers on the task side of the split. Chosen from docs/benchmarks.md: on a frozen
# (pretrained) trunk, each task needs its own copy of the top 2/3 of the layers to match the HF Trainer's
# full fine-tune (split sweep; with 1/2 SST-2 lost a point). When the trunk is fine-tuned on all tasks
# jointly, the roles swap: the trunk holds 2/3 and each task 1/3 (sharing suite: at or above the per-task
# fine-tunes, 1.5x the throughput of the frozen default).
DEFAULT_BRANCH_FRACTION = 2 / 3


def default_split(num_layers: int, sharing: str = "frozen") -> int:
    """The trunk depth used when a spec says ``split: auto``, for a sharing mode (``frozen`` or ``joint``).

    Example:
        >>> default_split(6), default_split(12), default_split(6, "joint"), default_split(12, "joint")
        (2, 4, 4, 8)
    """
    branch = max(1, round(num_layers * DEFAULT_BRANCH_FRACTION))
    return branch if sharing == "joint" else num_layers - branch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU.

    Example:
        >>> pick_device("cpu").type
        'cpu'
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FinechainError(f"unknown device '{name}'", fix="use auto, cpu, cuda or cuda:N", field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinechainError(f"device '{name}' asked for, but CUDA is not available here", fix="use auto or cpu", field="device") from None
    return device


def _tags(label: Any) -> bool:
    return isinstance(label, list) and all(isinstance(tag, str) for tag in label) and bool(label)


class Chain(nn.Module):
    """A pretrained encoder split at ``split``: a shared frozen trunk and per-task tails.

    Example:
        >>> chain = Chain.from_backbone("all-MiniLM-L6-v2", split=3)  # doctest: +SKIP
        >>> chain.fit(task_spec)                                        # doctest: +SKIP
        >>> chain.predict(["where is my card?"])                       # doctest: +SKIP
        [{'intent': {'label': 'card_arrival', 'score': 0.97}}]
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, ref: BackboneRef, path: Path, split: int, max_length: int = 128) -> None:
        super().__init__()
        num_layers = len(encoder.encoder.layer)
        if not 0 <= split <= num_layers:
            message = f"split {split} is outside 0..{num_layers} for this backbone"
            raise FinechainError(message, fix=f"choose 0..{num_layers}", field="split")
        check_max_length(max_length, encoder.config, tokenizer)
        self.encoder_config = encoder.config
        self.tokenizer = tokenizer
        self.backbone_ref = ref
        self.backbone_path = path
        self.split = split
        self.num_layers = num_layers
        self.max_length = max_length
        self.trunk = Trunk(encoder, split)
        # The backbone's own upper layers: templates for new branches and the rest of the encoder for embed()
        # (frozen, never saved: they are the backbone's).
        self.upper = LayerStack(list(encoder.encoder.layer)[split:], encoder.config).requires_grad_(False).eval()
        self.tasks = nn.ModuleDict()
        self.task_info: dict[str, dict[str, Any]] = {}
        self.trunk_tuning: dict[str, Any] | None = None  # set when the trunk's layers were trained (joint sharing)
        # inference precision: auto = bf16 autocast on GPUs and on CPUs with native bf16 (AMX or AVX512-BF16), else fp32
        self.precision = "auto"

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        split: int | str = "auto",
        max_length: int = 128,
        base_dir: Path | None = None,
        sharing: str = "frozen",
    ) -> Chain:
        """A chain with no tasks yet on a packaged backbone, local folder or hub id.

        ``split="auto"`` picks the measured default trunk depth for ``sharing`` (``frozen`` or ``joint``).

        Example:
            >>> Chain.from_backbone(split=6).num_layers  # doctest: +SKIP
            6
        """
        path, ref = resolve_backbone(backbone, base_dir)
        encoder = load_encoder(path)
        depth = default_split(len(encoder.encoder.layer), sharing) if split == "auto" else int(split)
        return cls(encoder, load_tokenizer(path), ref, path, depth, max_length)

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone_path: str | Path | None = None, device: str = "cpu") -> Chain:
        """Load a saved chain; the backbone is found from the manifest and its hash checked.

        Example:
            >>> chain = Chain.from_pretrained("demo-chain")  # doctest: +SKIP
        """
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise ArtifactError(
                f"no {MANIFEST} here: not a finechain folder", file=directory, fix="give the --out folder of `finechain train`"
            )
        manifest = read_json(directory / MANIFEST)
        ref = BackboneRef.from_json(manifest["backbone"])
        path = locate_backbone(ref, directory, backbone_path)
        encoder = load_encoder(path)
        chain = cls(encoder, load_tokenizer(path), ref, path, manifest["split"], manifest.get("max_length", 128))
        if manifest.get("trunk"):
            if not (directory / "trunk.safetensors").is_file():
                raise ArtifactError(
                    "the chain's tuned trunk (trunk.safetensors) is missing", file=directory, fix="re-save or retrain the chain"
                )
            chain.trunk.stack.layers.load_state_dict(load_tensors(directory / "trunk.safetensors"))
            chain.trunk_tuning = manifest["trunk"]
        for name, entry in manifest["tasks"].items():
            task_dir = directory / "tasks" / name
            missing = [f for f in entry["files"].values() if not (task_dir / f).is_file()]
            if missing:
                raise ArtifactError(f"task '{name}' is missing {missing}", file=task_dir, fix="re-save or retrain the chain")
            chain.tasks[name] = TaskModel.load(task_dir, entry, chain.fresh_branch(), chain.encoder_config)
            # everything the manifest says beyond the task's structure (its spec, metric, training, data, scores)
            # travels on, so re-saving (add-task) loses nothing and `eval` reads files with the task's own columns
            structure = {*chain.tasks[name].describe(), "files"}
            chain.task_info[name] = {k: v for k, v in entry.items() if k not in structure}
        return chain.to(pick_device(device))

    def fresh_branch(self) -> list[nn.Module]:
        """New copies of the pretrained upper layers, to start a task branch from."""
        return copy_layers(list(self.upper.layers))

    def new_task(
        self,
        head_cls: type[Head],
        labels: list[str],
        pooling: Pooling = "mean",
        dropout: float = 0.1,
        branch: dict[str, Any] | None = None,
        layer_mix: bool = False,
    ) -> TaskModel:
        """An untrained tail for a task type (not yet attached to the chain).

        ``layer_mix`` makes the head read a learned mix of the embeddings and every layer's output.

        Example:
            >>> task = chain.new_task(ClassificationHead, ["neg", "pos"])  # doctest: +SKIP
        """
        head = head_cls(self.encoder_config.hidden_size, labels, dropout=dropout)
        mix = self.num_layers + 1 if layer_mix else 0
        return TaskModel(head, self.fresh_branch(), self.encoder_config, pooling, branch_mode(branch), mix).to(self.device)

    def attach(self, name: str, task: TaskModel, info: dict[str, Any] | None = None) -> None:
        """Add (or replace) a trained task; no other task is touched."""
        self.tasks[name] = task.eval()
        self.task_info[name] = dict(info or {})

    @property
    def device(self) -> torch.device:
        """Where the trunk lives."""
        return next(self.trunk.parameters()).device

    # saving -------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The JSON manifest describing this chain."""
        from finechain import __version__

        return {
            "format": FORMAT_VERSION,
            "finechain_version": __version__,
            "backbone": self.backbone_ref.to_json(),
            "split": self.split,
            "num_layers": self.num_layers,
            "hidden_size": self.encoder_config.hidden_size,
            "max_length": self.max_length,
            "trunk": self.trunk_tuning,
            "tasks": {
                name: {
                    **task.describe(),
                    "files": {"branch": "branch.safetensors", "head": "head.safetensors"},
                    **self.task_info.get(name, {}),
                }
                for name, task in self.tasks.items()
            },
        }

    def save_pretrained(self, directory: str | Path, copy_backbone: bool = False, tasks: list[str] | None = None) -> Path:
        """Write the manifest and each task's safetensors (only ``tasks`` when given).

        The backbone is referenced by source and sha256, and copied only with ``copy_backbone``.

        Example:
            >>> chain.save_pretrained("my-chain")  # doctest: +SKIP
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.trunk_tuning is not None and (tasks is None or not (directory / "trunk.safetensors").exists()):
            save_tensors(directory / "trunk.safetensors", self.trunk.stack.layers.state_dict())
        for name in tasks if tasks is not None else list(self.tasks):
            self.tasks[name].save(directory / "tasks" / name)
        if copy_backbone and self.backbone_ref.kind != "copied":
            target = directory / "backbone"
            staging = directory / ".backbone.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.backbone_path, staging, ignore=shutil.ignore_patterns("*.bin", "*.h5", "*.onnx", "*.msgpack", ".git*"))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            self.backbone_ref = BackboneRef(self.backbone_ref.name, "copied", "backbone", self.backbone_ref.sha256)
            self.backbone_path = target
        write_json(directory / MANIFEST, self.manifest())
        return directory

    # inference ----------------------------------------------------------------------------
    def encode(self, texts: list[Any], with_words: bool = False) -> tuple[list[list[int]], Encoded | None]:
        """Token ids for raw texts or word lists; word positions too when asked (or for word lists).

        Example:
            >>> ids, encoded = chain.encode(["hello world"])  # doctest: +SKIP
        """
        if with_words or (bool(texts) and isinstance(texts[0], list)):
            encoded = encode(self.tokenizer, texts, self.max_length)
            return encoded.ids, encoded
        return tokenize(self.tokenizer, texts, self.max_length), None

    def task_names(self, tasks: list[str] | None = None) -> list[str]:
        """``tasks`` checked against this chain (default: all of them, in training order).

        Example:
            >>> chain.task_names(["intent"])  # doctest: +SKIP
            ['intent']
        """
        names = list(self.tasks) if tasks is None else list(tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise FinechainError(f"unknown task(s) {unknown}", fix=f"this chain has {sorted(self.tasks)}")
        return names

    def padded_batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Length-bucketed batches in a fixed order: (positions in ``ids``, padded ids, mask), on the chain's device.

        Example:
            >>> ids, _ = chain.encode(["a", "a longer text"])  # doctest: +SKIP
            >>> [positions for positions, _, _ in chain.padded_batches(ids, 64)]  # doctest: +SKIP
            [[0, 1]]
        """
        pad = self.tokenizer.pad_token_id or 0
        cuda = self.device.type == "cuda"  # pinned memory: the copy does not wait for the GPU's queued work
        for batch in inference_batches([len(x) for x in ids], batch_size, self.device):
            padded = pad_ids([ids[i] for i in batch], pad)
            input_ids, mask = (t.pin_memory().to(self.device, non_blocking=True) for t in padded) if cuda else padded
            yield batch, input_ids, mask

    @torch.inference_mode()
    def run_tasks(
        self, texts: list[Any], tasks: list[str] | None = None, batch_size: int = 64
    ) -> tuple[dict[str, list[torch.Tensor]], Encoded | None]:
        """Raw head outputs per task, in input order, and the word positions when a tagging task ran.

        The trunk runs once per batch for all requested tasks. ``texts`` are raw strings, or word
        lists (pre-split input for tagging). Sequence-level tasks read the first ``max_length`` tokens; for
        texts longer than that, token-level tasks read overlapping windows, and their output rows are then
        one per word (``encoded.word_starts`` of such a text points at those rows).
        """
        names = self.task_names(tasks)
        self.eval()
        token_level = {n for n in names if self.tasks[n].head.level == "token"}
        ids, encoded = self.encode(texts, with_words=bool(token_level))
        outputs = self._outputs(ids, names, token_level, batch_size)
        cut = encoded is not None and bool(token_level)
        long = [i for i, starts in enumerate(encoded.word_starts) if len(ids[i]) >= self.max_length and None in starts] if cut else []
        if long:  # words past max_length: token-level tasks read overlapping windows instead of the cut text
            spans = None if encoded.word_spans is None else [encoded.word_spans[i] for i in long]
            windows = overflow_windows(self.tokenizer, [texts[i] for i in long], self.max_length, self.max_length // 4, spans)
            in_windows = self._outputs(windows.ids, sorted(token_level), token_level, batch_size)
            for j, index in enumerate(long):
                best = windows.best_positions(j, len(encoded.word_starts[index]))
                found = [b for b in best if b is not None]
                for name in token_level:
                    outputs[name][index] = torch.stack([in_windows[name][w][p] for w, p in found])
                rank = iter(range(len(found)))
                encoded.word_starts[index] = [None if b is None else next(rank) for b in best]
        return outputs, encoded

    def _outputs(self, ids: list[list[int]], names: list[str], token_level: set[str], batch_size: int) -> dict[str, list[torch.Tensor]]:
        """Head outputs of ``names`` for token-id sequences, in order; one trunk pass per batch for all of them."""
        outputs: dict[str, list[torch.Tensor]] = {n: [torch.empty(0)] * len(ids) for n in names}
        pending = []  # results stay on the device until every batch is queued: a GPU is never waited for in between
        for batch, input_ids, mask in self.padded_batches(ids, batch_size):
            with autocast_context(self.device, self.precision):
                states = self.trunk.all_states(input_ids, mask)
                pending.append((batch, {n: self.tasks[n](states, mask).float() for n in names}))
        for batch, results in pending:
            for name, result in results.items():
                result = result.cpu()
                for row, index in enumerate(batch):
                    outputs[name][index] = result[row, : len(ids[index])] if name in token_level else result[row]
        return outputs

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings from the untouched backbone: trunk + the backbone's upper layers, mean pooled.

        For sentence-transformers backbones such as all-MiniLM-L6-v2 these match ``SentenceTransformer.encode``
        (mean pooling, L2-normalised). Not available once the trunk itself was fine-tuned (``sharing: joint``).

        Example:
            >>> chain.embed(["a cat", "a kitten"]).shape  # doctest: +SKIP
            torch.Size([2, 384])
        """
        if self.trunk_tuning is not None:
            raise FinechainError(
                "this chain's trunk was fine-tuned (sharing: joint), so it no longer gives the backbone's embeddings",
                fix="embed with Chain.from_backbone(...) or a chain trained with sharing: frozen",
            )
        self.eval()
        ids = tokenize(self.tokenizer, as_texts(texts), self.max_length)
        out = torch.empty((len(ids), self.encoder_config.hidden_size))
        for batch, input_ids, mask in self.padded_batches(ids, batch_size):
            with autocast_context(self.device, self.precision):
                vectors = pool(self.upper(self.trunk(input_ids, mask), mask)[-1], mask, "mean").float()
            out[batch] = (torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors).cpu()
        return out

    def predict(self, texts: list[Any], tasks: list[str] | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
        """Predictions for every text and requested task (default: all), one trunk pass.

        Classification gives ``label``/``score``, multilabel ``labels``/``scores``, regression
        ``value``, tagging ``entities`` (type, text, character ``start``/``end``, score) and ``tags``.

        Example:
            >>> chain.predict(["great film"], tasks=["sentiment"])  # doctest: +SKIP
            [{'sentiment': {'label': 'positive', 'score': 0.98}}]
        """
        texts = as_texts(texts)
        raw, encoded = self.run_tasks(texts, tasks, batch_size)
        return self.decode(raw, encoded, texts)

    def decode(self, raw: dict[str, list[torch.Tensor]], encoded: Encoded | None, texts: list[Any]) -> list[dict[str, Any]]:
        """:meth:`predict`'s answers from :meth:`run_tasks`' raw outputs: per text, each task's decoded result.

        Example:
            >>> raw, encoded = chain.run_tasks(["great film"])  # doctest: +SKIP
            >>> chain.decode(raw, encoded, ["great film"])[0]["sentiment"]["label"]  # doctest: +SKIP
            'positive'
        """
        decoded = {}
        for name, rows in raw.items():
            head = self.tasks[name].head
            decoded[name] = head.decode(rows, encoded, texts) if head.level == "token" else head.decode(rows)
        return [{name: decoded[name][i] for name in raw} for i in range(len(texts))]

    def score(self, task: str, texts: list[Any], labels: list[Any]) -> dict[str, Any]:
        """Metrics of ``task`` on labelled texts, labels read and checked like training data (a label never seen in
        training is a :class:`DataError` naming the item, ``labels[3]``). Tagging takes word lists with one tag per
        word, or raw strings with ``[start, end, type]`` entity spans (or one tag per word as :func:`split_words` cuts them).

        Example:
            >>> chain.score("sentiment", ["great"], ["positive"])["accuracy"]  # doctest: +SKIP
            1.0
        """
        name = self.task_names([task])[0]
        head = self.tasks[name].head
        texts = as_texts(texts)
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels", fix="pass one label per text")
        where = InMemory("labels")
        options = {"label_separator": self.task_info.get(name, {}).get("spec", {}).get("label_separator")}
        parsed = []
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            if head.level == "token":  # a raw string's tags are for its words as predict cuts them
                words = [text[a:b] for a, b in split_words(text)] if isinstance(text, str) and _tags(label) else text
                value: Any = tagged_row(words, label, where, i, strict=False).tags
            else:
                value = type(head).parse_label(label, file=where, line=i, options=options)
            head.check_known(value, file=where, line=i)
            parsed.append(value)
        outputs, encoded = self.run_tasks(texts, [task])
        return head.score(outputs[task], head.targets(parsed, encoded))

    # training -----------------------------------------------------------------------------
    def fit(
        self,
        spec: TaskSpec,
        training: TrainingConfig | None = None,
        *,
        texts: list[Any] | None = None,
        labels: list[Any] | None = None,
        dev: tuple[list[Any], list[Any]] | None = None,
        test: tuple[list[Any], list[Any]] | None = None,
        **options: Any,
    ) -> FitResult:
        """Train the task described by ``spec`` on this chain's trunk and attach it.

        The data comes from the spec's files, or from ``texts`` and ``labels`` in memory (with optional
        ``dev`` and ``test`` as ``(texts, labels)``; without ``dev`` a validation split is cut from them).
        Tagging takes word lists and BIO tag lists. ``options`` go to
        :func:`finechain.train.trainer.fit_task` (``run_dir``, ``resume``, ``progress``, ``data``).

        Example:
            >>> chain.fit(TaskSpec(name="sentiment", train="sst2.csv"))  # doctest: +SKIP
            >>> chain.fit(TaskSpec(name="topic"), texts=["stocks fell", "late goal"], labels=["business", "sport"])  # doctest: +SKIP
        """
        from finechain.data.prepare import task_data_from_lists
        from finechain.spec import TrainingConfig
        from finechain.train.trainer import fit_task

        if texts is not None or labels is not None:
            if texts is None or labels is None:
                raise DataError("pass both texts= and labels=", fix="give one label per text")
            if spec.train is not None:
                raise SpecError(f"task '{spec.name}' has both a train file and texts=", fix="drop one of them")
            seed = spec.training.apply(training or TrainingConfig()).seed
            options["data"] = task_data_from_lists(spec, list(texts), list(labels), dev=dev, test=test, seed=seed)
        elif dev is not None or test is not None:
            raise SpecError("dev= and test= go with texts= and labels=", fix="for files, set the spec's dev and test paths")
        return fit_task(self, spec, training, **options)

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
        :class:`~finechain.data.prepare.TaskData` (e.g. from ``task_data_from_lists`` with a dev set).
        Every task's data is read and checked before training starts. ``options`` go to
        :func:`finechain.train.joint.fit_joint` (``run_dir``, ``resume``, ``progress``).

        Example:
            >>> chain = Chain.from_backbone(split="auto", sharing="joint")  # doctest: +SKIP
            >>> specs = [TaskSpec(name="topic", train="topics.csv"), TaskSpec(name="mood")]  # doctest: +SKIP
            >>> results = chain.fit_joint(specs, data={"mood": (texts, labels)})  # doctest: +SKIP
        """
        from finechain.data.prepare import load_task_data, task_data_from_lists
        from finechain.model.heads import head_type
        from finechain.spec import JointConfig, TrainingConfig
        from finechain.train.joint import fit_joint

        training = training or TrainingConfig()
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
        return fit_joint(self, specs, datas, training, joint or JointConfig(), **options)


__all__ = ["Chain", "default_split", "pick_device"]
