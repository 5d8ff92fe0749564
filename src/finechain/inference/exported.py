"""An exported chain (``finechain export``): one ONNX graph, ``tokenizer.json`` and a manifest, run with ONNX Runtime,
the ``tokenizers`` library and NumPy; no PyTorch, no transformers. :class:`~finechain.inference.engine.Engine` runs it
exactly as it runs a PyTorch chain (the same ``prepare`` and ``decode``), with :class:`OnnxRunner` for ``forward``.

    exported/
      finechain-export.json   what is inside: tasks with their heads (labels, options, calibration), max length,
                              the checks made at export (largest difference to PyTorch per task), compression steps
      model.onnx              inputs input_ids, attention_mask [batch, tokens] int64 and the batch's packed rows
                              (format 5: pack_source, pack_target [tokens], pack_segments [rows, row width]; see
                              finechain.data.packing); one output per task
      tokenizer.json

or, exported with a graph per task (format 2), ``trunk.onnx`` (inputs as above; outputs the manifest's
``trunk_outputs``, the last being the trunk's output) and ``tasks/NAME.onnx`` (inputs the trunk outputs the task's
``inputs`` name and ``attention_mask``; its one output) in place of ``model.onnx``. Exported with sentence embeddings,
``embeddings.onnx`` too (inputs as ``model.onnx``; output ``embeddings``, ``[batch, hidden]``: the untouched backbone's
mean-pooled last layer, normalised by the runner when asked).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finechain.data.inputs import select_tasks
from finechain.data.packing import packed_layout, packed_rows, unpacked_layout
from finechain.data.tokenizer_file import TokenizerFile
from finechain.data.tokens import Encoded, encode_texts
from finechain.errors import ArtifactError, FinechainError, short_reason
from finechain.heads import Head, head_type
from finechain.spec.flows import FlowSpec
from finechain.version import __version__

EXPORT_MANIFEST = "finechain-export.json"
# the newest this reads: 1 = one graph, 2 = a trunk graph and a graph per task, 3 = either with sentence embeddings,
# 4 = any of them with the runtime its graphs are made for (static int8: OpenVINO), 5 = a graph that takes packed rows
EXPORT_FORMAT = 5
Runtime = Literal["onnxruntime", "openvino"]  # what runs an exported chain's graphs (ExportedChain's ``runtime``)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
GRAPH = "model.onnx"
# what a graph that takes packed rows (format 5) reads: the padded batch, and where its tokens go in the packed rows
PACKED_INPUTS = ("input_ids", "attention_mask", "pack_source", "pack_target", "pack_segments")
TRUNK_GRAPH = "trunk.onnx"
EMBEDDINGS_GRAPH = "embeddings.onnx"
TOKENIZER = "tokenizer.json"


def task_graph(name: str) -> str:
    """Where a task's own graph is in a folder exported with a graph per task.

    Example:
        >>> task_graph("intent")
        'tasks/intent.onnx'
    """
    return f"tasks/{name}.onnx"


class ExportedTask(BaseModel):
    """One task of an exported chain: its head (type and :meth:`~finechain.heads.Head.config`), the graph output that
    holds its outputs, and how far those were from PyTorch's when exported."""

    model_config = ConfigDict(extra="forbid")
    type: str
    head: dict[str, Any]
    output: str
    max_abs_diff: float | None = None
    metric: str | None = None  # the selection metric it was trained for
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)  # as trained: split -> metric -> value
    spec: dict[str, Any] | None = None  # the task's spec as trained (eval reads files with its columns)
    graph: str | None = None  # its own graph (exported with a graph per task); None: an output of the manifest's graph
    inputs: list[str] = Field(default_factory=list)  # the trunk graph's outputs its own graph reads


class ExportManifest(BaseModel):
    """``finechain-export.json``: checked on load; a newer format is refused with what to do."""

    model_config = ConfigDict(extra="forbid")
    format: int = EXPORT_FORMAT
    finechain_version: str = __version__
    source: str = ""
    backbone: str = ""
    split: int = 0
    layers: int = 0
    max_length: int
    pad_id: int = 0
    tasks: dict[str, ExportedTask]
    graph: str = GRAPH  # the graph that reads token ids: every task's outputs, or the trunk's (see trunk_outputs)
    trunk_outputs: list[str] = Field(default_factory=list)  # a graph per task: what the trunk graph returns
    tokenizer: str = TOKENIZER
    weights: str = "fp32"  # fp32, int8 (dynamic), int8 static (calibrated); each may add ", fp16 storage" or ", bf16 storage"
    runtime: Runtime = "onnxruntime"  # the runtime the graphs run fastest on (runtime "auto" picks it)
    steps: list[str] = Field(default_factory=list)  # what was done to the chain on the way: export, merge LoRA, int8 ...
    flows: list[dict[str, Any]] = Field(default_factory=list)  # the chain's flows whose tasks were all exported
    embeddings: str | None = None  # the sentence-embedding graph (export --embeddings); None: not exported
    embedding_size: int = 0  # its vectors' length
    embeddings_max_abs_diff: float | None = None  # largest difference of the normalised vectors to PyTorch's at export
    packed: bool = False  # the graph takes packed rows (PACKED_INPUTS; format 5), else a padded batch alone
    hidden_size: int = 0  # the layers' width (what packing a batch is planned with)


def is_exported(directory: str | Path) -> bool:
    """True for a folder written by ``finechain export`` (or ``compress``).

    Example:
        >>> is_exported("demo-chain")
        False
    """
    return (Path(directory) / EXPORT_MANIFEST).is_file()


def read_export_manifest(directory: str | Path) -> ExportManifest:
    """The checked manifest of an exported chain; a missing, unreadable or newer one is an :class:`ArtifactError`.

    Example:
        >>> read_export_manifest("demo-onnx").tasks.keys()  # doctest: +SKIP
        dict_keys(['intent', 'sentiment', 'entities'])
    """
    path = Path(directory) / EXPORT_MANIFEST
    if not path.is_file():
        raise ArtifactError("not an exported chain (no finechain-export.json)", file=Path(directory), fix="run finechain export first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ArtifactError(f"unreadable manifest ({short_reason(error)})", file=path, fix="export the chain again") from None
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] > EXPORT_FORMAT:
        raise ArtifactError(
            f"export format {data['format']} is newer than this finechain reads ({EXPORT_FORMAT})", file=path, fix="upgrade finechain"
        )
    try:
        return ExportManifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(f"{where}: {first['msg']}", file=path, fix="export the chain again") from None


class ExportedTaskView:
    """What the engine needs of a task: its head."""

    def __init__(self, head: Head) -> None:
        self.head = head


class ExportedChain:
    """An exported folder, loaded: tokenizer, heads and a session per graph (ONNX Runtime's or OpenVINO's).

    ``threads`` sets the runtime's threads per graph (default: one per core). ``runtime`` picks what runs the graphs:
    ``onnxruntime``, ``openvino`` (``pip install openvino``; on CPUs with native bf16 it computes fp32 graphs in bf16),
    or ``auto``: the one the folder's graphs were made for (``openvino`` after ``finechain compress --int8 --static``,
    else ``onnxruntime``), falling back to ONNX Runtime where OpenVINO is not installed or the CPU lacks int8 dot
    products (VNNI, AMX; see :func:`auto_runtime`). ``spinning``: whether ONNX Runtime's idle threads spin waiting for
    work (its default) or sleep; default: spin where the folder has one graph, sleep where a graph per task makes
    sessions take turns (a spinning session's threads take CPU from the next one).

    Example:
        >>> from finechain.inference import Engine
        >>> engine = Engine(ExportedChain("demo-onnx"))  # doctest: +SKIP
        >>> engine.predict(["where is my card?"])[0]["intent"].label  # doctest: +SKIP
        'card_arrival'
    """

    def __init__(
        self,
        directory: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        runtime: str = "auto",
        spinning: bool | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = read_export_manifest(self.directory)
        self.runtime = resolve_runtime(runtime, self.manifest)
        for name in [*graph_files(self.manifest), self.manifest.tokenizer]:
            if not (self.directory / name).is_file():
                raise ArtifactError(f"{name} is missing", file=self.directory, fix="export the chain again")
        self.max_length = self.manifest.max_length
        self.pad_id = self.manifest.pad_id
        self.tokenizer = TokenizerFile(self.directory / self.manifest.tokenizer, self.pad_id)
        self.tasks: dict[str, ExportedTaskView] = {}
        for name, task in self.manifest.tasks.items():
            try:
                self.tasks[name] = ExportedTaskView(head_type(task.type).from_config(task.head))
            except (FinechainError, KeyError, TypeError, ValueError) as error:
                raise ArtifactError(
                    f"tasks.{name}.head: {short_reason(error)}", file=self.directory / EXPORT_MANIFEST, fix="export the chain again"
                ) from None
        self.flows: dict[str, FlowSpec] = {}  # by name, as the chain had them (see finechain.flows)
        for i, flow in enumerate(self.manifest.flows):
            try:
                self.flows[flow["name"]] = FlowSpec.model_validate(flow)
            except (KeyError, TypeError, ValidationError) as error:
                fix = "export the chain again"
                raise ArtifactError(f"flows.{i}: {short_reason(error)}", file=self.directory / EXPORT_MANIFEST, fix=fix) from None
        self.threads = threads or len(os.sched_getaffinity(0))  # the runtime's threads per session
        separate_embeddings = bool(self.manifest.embeddings) and self.manifest.embeddings != self.manifest.graph
        several = any(task.graph for task in self.manifest.tasks.values()) or separate_embeddings
        self.spinning = not several if spinning is None else spinning
        self.session = self._session(self.manifest.graph, providers)
        self.inputs = session_inputs(self.session)  # what the graph that reads token ids takes
        self.outputs = {name: task.output for name, task in self.manifest.tasks.items()}
        self.task_sessions = {  # a graph per task: each task's own session, on the trunk session's outputs
            name: self._session(task.graph, providers) for name, task in self.manifest.tasks.items() if task.graph
        }
        embeddings = self.manifest.embeddings
        self.embedding_session = None  # exported with sentence embeddings: their session (the only one without tasks)
        if embeddings:
            self.embedding_session = self.session if embeddings == self.manifest.graph else self._session(embeddings, providers)

    def _session(self, graph: str, providers: Sequence[str] | None) -> Any:
        """A session over one of the folder's graphs, by this chain's runtime."""
        if self.runtime == "openvino":
            from finechain.inference.openvino_session import OpenVinoSession

            return OpenVinoSession(self.directory / graph, self.threads)
        return onnx_session(self.directory / graph, self.threads, providers, spinning=self.spinning)

    @property
    def embedding_size(self) -> int:
        """The length of this chain's sentence embeddings (0 when it was exported without them)."""
        return self.manifest.embedding_size

    @property
    def split(self) -> int:
        """The trunk depth of the chain this was exported from."""
        return self.manifest.split

    def task_names(self, tasks: Sequence[str] | None = None) -> list[str]:
        """``tasks`` checked against this chain (default: all, in export order)."""
        return select_tasks(self.tasks, tasks, "this exported chain")

    def encode(self, texts: list[Any], with_words: bool = False) -> tuple[list[list[int]], Encoded | None]:
        """Token ids for raw texts or word lists; word positions too when asked (or for word lists)."""
        return encode_texts(self.tokenizer, texts, self.max_length, with_words)

    def runner(self, precision: str = "auto") -> OnnxRunner:
        """The engine's ``forward`` for this chain; a ``precision`` other than ``auto`` is refused (its graphs fix it)."""
        check_precision(precision, self.manifest)
        return OnnxRunner(self)


class OnnxRunner:
    """Runs padded token batches through the exported graph: every requested task's output in one session call. A graph
    that takes packed rows (exported since format 5) is given each batch's texts end to end in a few rows where that
    costs less than the padded batch (:func:`~finechain.data.packing.packed_rows`), as a PyTorch chain runs on a CPU."""

    def __init__(self, chain: ExportedChain) -> None:
        self.chain = chain

    @property
    def packs(self) -> bool:
        """True for a graph that takes packed rows: it computes no padding, so the engine need not cut batches by
        length."""
        return self.chain.manifest.packed

    @property
    def pass_tokens(self) -> float:
        """What one more session call costs, in tokens computed (how the engine cuts a batch of mixed lengths for graphs
        that take padded batches: a graph per task, and single graphs exported before format 5): ~5 on
        one thread (1.9 ms vs 0.35 ms per padded token for the four-task chain, `python -m benchmarks pass-cost
        --backend onnx`), ~30 on more, where a small call leaves the other threads little to share (fits of 33 for
        fp32 and 18-45 for int8 on two threads); PyTorch's is ~40 (data.tokens)."""
        return 5.0 if self.chain.threads == 1 else 30.0

    @property
    def device_type(self) -> str:
        """Where the session runs (inference batches are planned for a CPU)."""
        return "cpu"

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        wanted: Mapping[str, list[int] | None],
        precision: str = "auto",
        observer: Callable[[str, float], None] | None = None,
        kept: list[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Outputs per task in ``wanted`` for the rows it lists (``None``: every row), float32. The precision was
        fixed at export and one session call computes every task, so ``precision`` and ``observer`` are not used. With
        ``kept`` (a graph per task only: one graph gives no trunk states out; the engine checks ``keeps_states``) the
        batch's trunk outputs are appended to it, for :meth:`run_kept`."""
        if kept is not None and not self.keeps_states:
            raise ValueError("an exported chain with one graph cannot keep trunk states")
        names = list(wanted)
        feeds = graph_feeds(self.chain.inputs, input_ids, attention_mask, self.chain.manifest.hidden_size)
        if self.keeps_states:
            manifest = self.chain.manifest
            needed = manifest.trunk_outputs if kept is not None else [i for name in wanted for i in manifest.tasks[name].inputs]
            needed = list(dict.fromkeys(needed))
            states = dict(zip(needed, self.chain.session.run(needed, feeds), strict=True))
            mask = attention_mask.astype(np.int64, copy=False)  # the task graphs' (the trunk graph may not read it)
            if kept is not None:  # kept states must serve any task later
                kept.append((states, mask))
            return self._tails(states, mask, wanted)
        arrays = self.chain.session.run([self.chain.outputs[n] for n in names], feeds)
        results = {}
        for name, array in zip(names, arrays, strict=True):
            rows = wanted[name]
            array = np.asarray(array, dtype=np.float32)
            results[name] = array if rows is None else array[rows]
        return results

    @property
    def keeps_states(self) -> bool:
        """True for a chain exported with a graph per task: the trunk graph's outputs can be kept and each task's graph
        run on them later (:meth:`run_kept`)."""
        return bool(self.chain.task_sessions)

    def run_kept(
        self,
        handle: Any,
        wanted: Mapping[str, list[int] | None],
        precision: str = "auto",
        observer: Callable[[str, float], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Like :meth:`run`, on trunk outputs that ``run(..., kept=...)`` kept: only the tasks' graphs run."""
        return self._tails(*handle, wanted)

    def _tails(self, states: Mapping[str, np.ndarray], mask: np.ndarray, wanted: Mapping[str, list[int] | None]) -> dict[str, np.ndarray]:
        """Each wanted task's graph on the trunk outputs of the rows it is wanted for."""
        results = {}
        for name, rows in wanted.items():
            task = self.chain.manifest.tasks[name]
            given = {i: states[i] if rows is None else states[i][rows] for i in task.inputs}
            given["attention_mask"] = mask if rows is None else mask[rows]
            (array,) = self.chain.task_sessions[name].run([task.output], given)
            results[name] = np.asarray(array, dtype=np.float32)
        return results

    def fetch(self, result: np.ndarray) -> np.ndarray:
        """Already NumPy."""
        return result

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool, precision: str = "auto") -> np.ndarray:
        """The backbone's sentence embeddings from the embedding graph (``finechain export --embeddings``),
        L2-normalised unless ``normalize`` is off; ``precision`` was fixed at export."""
        session = self.chain.embedding_session
        if session is None:
            raise FinechainError(
                f"the exported chain at {self.chain.directory} has no sentence embeddings",
                fix="export it again with --embeddings (from a chain whose trunk is not tuned)",
            )
        feeds = _feeds(input_ids, attention_mask)
        (vectors,) = session.run(["embeddings"], feeds)
        vectors = np.asarray(vectors, dtype=np.float32)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def resolve_runtime(runtime: str, manifest: ExportManifest) -> str:
    """The runtime that will run an exported chain: ``runtime`` itself, or for ``auto`` what :func:`auto_runtime`
    picks on this machine; an unknown name is a :class:`FinechainError`.

    Example:
        >>> resolve_runtime("auto", ExportManifest(max_length=8, tasks={}))
        'onnxruntime'
    """
    check_runtime(runtime)
    if runtime == "auto":
        from finechain.inference.cpu_features import cpu_has_int8_dot
        from finechain.inference.openvino_session import openvino_installed

        return auto_runtime(manifest.runtime, openvino=openvino_installed(), int8_dot=cpu_has_int8_dot())
    return runtime


def auto_runtime(made_for: str, *, openvino: bool, int8_dot: bool | None) -> str:
    """What ``runtime: auto`` runs a folder ``made_for`` a runtime on: OpenVINO (for static int8 graphs) only where it
    is installed and the CPU is not known to lack int8 dot-product instructions (``int8_dot``: VNNI or AMX; ``None``
    when unknown), since without them OpenVINO's int8 kernels run slower than fp32; else ONNX Runtime.

    Example:
        >>> auto_runtime("openvino", openvino=True, int8_dot=True), auto_runtime("openvino", openvino=True, int8_dot=False)
        ('openvino', 'onnxruntime')
    """
    if made_for == "openvino" and (not openvino or int8_dot is False):
        return "onnxruntime"
    return made_for


def check_runtime(runtime: str, field: str = "runtime") -> None:
    """``auto`` or one of :data:`RUNTIMES`; anything else is a :class:`FinechainError` naming ``field``.

    Example:
        >>> check_runtime("openvino")
    """
    if runtime != "auto" and runtime not in RUNTIMES:
        raise FinechainError(f"unknown runtime '{runtime}'", fix=f"use auto or one of {', '.join(RUNTIMES)}", field=field)


def check_precision(precision: str, manifest: ExportManifest, field: str = "precision", file: str | Path | None = None) -> None:
    """An exported chain computes in the precision its graphs were exported or compressed with: ``auto`` passes, any
    other ``precision`` is a :class:`FinechainError` naming ``field`` (refused, not ignored).

    Example:
        >>> check_precision("auto", read_export_manifest("demo-onnx"))  # doctest: +SKIP
    """
    if precision != "auto":
        raise FinechainError(
            f"{field} {precision}: an exported chain computes in the precision it was exported or compressed with ({manifest.weights})",
            file=file,
            fix=f"leave {field} at auto; finechain compress --int8, --fp16 or --bf16 makes a folder of another precision",
            field=field,
        )


def graph_files(manifest: ExportManifest) -> list[str]:
    """Every ONNX graph of an exported folder, relative to it: the one graph, or the trunk's and each task's; and the
    sentence-embedding graph when there is one.

    Example:
        >>> graph_files(read_export_manifest("demo-onnx"))  # doctest: +SKIP
        ['model.onnx']
    """
    extra = [manifest.embeddings] if manifest.embeddings else []
    return list(dict.fromkeys([manifest.graph, *(task.graph for task in manifest.tasks.values() if task.graph), *extra]))


def _feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """A padded batch as the graphs read it (int64 token ids and mask)."""
    return {"input_ids": input_ids.astype(np.int64, copy=False), "attention_mask": attention_mask.astype(np.int64, copy=False)}


def session_inputs(session: Any) -> list[str]:
    """The input names of an ONNX Runtime or :class:`~finechain.inference.openvino_session.OpenVinoSession` session.

    Example:
        >>> session_inputs(onnx_session(Path("demo-onnx/model.onnx"), threads=2))  # doctest: +SKIP
        ['input_ids', 'attention_mask', 'pack_source', 'pack_target', 'pack_segments']
    """
    return list(session.inputs) if hasattr(session, "inputs") else [i.name for i in session.get_inputs()]


def graph_feeds(inputs: Sequence[str], input_ids: np.ndarray, attention_mask: np.ndarray, hidden_size: int) -> dict[str, np.ndarray]:
    """A padded batch as a graph with ``inputs`` reads it: int64 token ids and mask, and the batch's packing
    (:func:`packing_feeds`, planned for layers ``hidden_size`` wide) where the graph takes packed rows; only the inputs
    the graph has (tracing drops an unused one: a graph whose heads do not read the mask has no ``attention_mask``).

    Example:
        >>> sorted(graph_feeds(PACKED_INPUTS, np.array([[5, 6]]), np.array([[1, 1]]), 384))
        ['attention_mask', 'input_ids', 'pack_segments', 'pack_source', 'pack_target']
    """
    feeds = _feeds(input_ids, attention_mask)
    if "pack_segments" in inputs:
        feeds |= packing_feeds(feeds["attention_mask"], hidden_size)
    return {name: feeds[name] for name in inputs}


def packing_feeds(attention_mask: np.ndarray, hidden_size: int) -> dict[str, np.ndarray]:
    """The packing inputs of a graph that takes packed rows for a padded batch with ``attention_mask``: its texts laid
    into the cheapest rows, or each in its own row where packing would not save.

    Example:
        >>> feeds = packing_feeds(np.array([[1] * 60, [1] * 4 + [0] * 56]), 384)
        >>> feeds["pack_segments"].shape
        (1, 64)
    """
    lengths = attention_mask.sum(1).tolist()
    width = attention_mask.shape[1]
    members = packed_rows(lengths, width, hidden_size)
    layout = unpacked_layout(lengths, width) if members is None else packed_layout(lengths, width, members)
    return dict(zip(PACKED_INPUTS[2:], layout, strict=True))


def onnx_session(path: Path, threads: int, providers: Sequence[str] | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime inference session over ``path`` as an exported chain runs its graphs: all graph optimisations on,
    ``threads`` intra-op threads (spinning while idle, or with ``spinning`` off sleeping), one inter-op thread, only
    errors logged; a graph that cannot be loaded is an :class:`ArtifactError`.

    Example:
        >>> onnx_session(Path("demo-onnx/model.onnx"), threads=2).get_outputs()[0].name  # doctest: +SKIP
        'intent'
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise FinechainError("onnxruntime is not installed", fix="pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about initializers on stdout
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as error:  # onnxruntime raises its own exception types for a bad graph
        raise ArtifactError(f"the ONNX graph cannot be loaded ({short_reason(error)})", file=path, fix="export the chain again") from None
