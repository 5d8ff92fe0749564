"""``finechain compress``: a student chain (fewer layers, distilled from the chain), int8 weights, fp16 or bf16 storage,
or a combination (in that order)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finechain.chain import Chain
from finechain.errors import FinechainError
from finechain.export.half import Storage, store_half
from finechain.inference.exported import ExportManifest, is_exported
from finechain.io import building_folder, refuse_existing
from finechain.model.manifest import branch_narrowing
from finechain.model.student import check_ffn_share
from finechain.train.checkpoint import Checkpointer


@dataclass
class Compressed:
    """What ``compress`` did: the steps, and per task the teacher's and the result's validation metric (a student)
    or the largest output change (int8)."""

    steps: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def distill_run(out: Path) -> Path:
    """Where :func:`compress_chain` distils the student it writes to ``out``: a hidden folder beside it with the run's
    checkpoint (written at every validation check), kept when the run stops early so that ``resume`` continues it,
    removed once the student is saved.

    Example:
        >>> distill_run(Path("chains/small"))
        PosixPath('chains/.small.distill')
    """
    return out.parent / f".{out.name}.distill"


def distill_checkpointed(out: Path) -> bool:
    """Whether an interrupted distillation into ``out`` left a checkpoint that ``resume`` continues from.

    Example:
        >>> distill_checkpointed(Path("chains/never-made"))
        False
    """
    return bool(Checkpointer.runs_under(distill_run(out)))


def student_asked(
    trunk_layers: int | None,
    branch_layers: int | None,
    task_branch_layers: Mapping[str, int] | None,
    ffn_width: float | None,
    attention_heads: int | None,
    task_ffn_width: Mapping[str, float] | None = None,
    task_attention_heads: Mapping[str, int] | None = None,
) -> bool:
    """Whether :func:`compress_chain`'s options ask for a distilled student (fewer layers, neurons or heads), rather
    than for the chain's own weights in int8 or half-size storage.

    Example:
        >>> student_asked(None, None, {}, None, None), student_asked(None, None, None, None, 10)
        (False, True)
        >>> student_asked(None, None, None, None, None, task_ffn_width={"intent": 0.5})
        True
    """
    given = (trunk_layers, branch_layers, ffn_width, attention_heads)
    return any(x is not None for x in given) or any(map(bool, (task_branch_layers, task_ffn_width, task_attention_heads)))


def compress_chain(
    source: Path,
    out: Path,
    *,
    trunk_layers: int | None = None,
    branch_layers: int | None = None,
    task_branch_layers: Mapping[str, int] | None = None,
    ffn_width: float | None = None,
    attention_heads: int | None = None,
    task_ffn_width: Mapping[str, float] | None = None,
    task_attention_heads: Mapping[str, int] | None = None,
    texts: list[str] | None = None,
    int8: bool = True,
    static: bool = False,
    storage: Storage | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    **distil_options: Any,
) -> Compressed:
    """Compress the chain at ``source`` into ``out``: with ``trunk_layers`` and/or ``branch_layers`` (and per task
    ``task_branch_layers``, which win) and/or ``ffn_width`` (the share of each layer's feed-forward neurons kept) and/or
    ``attention_heads`` (how many of each layer's attention heads are kept; per task ``task_ffn_width`` and
    ``task_attention_heads``, a task's branch narrower than the trunk) a distilled student chain (a chain folder, or
    with ``int8`` / ``storage`` its export with int8 weights / its float weights stored as ``"fp16"`` or ``"bf16"``;
    branch layers alone keep every trunk layer, a task left out of both keeps its branch), else the export of ``source``
    with int8 weights and/or half-size storage. With ``static`` the int8 step is static (NNCF, calibrated on ``texts``
    or on the tasks' training texts; made for OpenVINO) instead of dynamic (ONNX Runtime). Nothing is left at ``out``
    unless every step worked. A student's distillation is checkpointed at every validation check in
    :func:`distill_run`; ``resume`` continues an interrupted one (same options) to the same student.

    Example:
        >>> compress_chain(Path("my-chain"), Path("my-chain-small"), trunk_layers=3, branch_layers=1, int8=False)  # doctest: +SKIP
        >>> lean = {"trunk_layers": 3, "branch_layers": 0, "task_branch_layers": {"intent": 1}}
        >>> compress_chain(Path("my-chain"), Path("my-chain-lean"), **lean)  # doctest: +SKIP
        >>> compress_chain(Path("my-chain"), Path("my-chain-narrow"), trunk_layers=3, branch_layers=1, ffn_width=0.75)  # doctest: +SKIP
        >>> compress_chain(Path("my-chain"), Path("my-chain-heads"), trunk_layers=3, branch_layers=1, attention_heads=10)  # doctest: +SKIP
    """
    if static and not int8:
        raise FinechainError("--static is a kind of int8 weights", fix="add --int8, or drop --static")
    narrower = {"task_ffn_width": task_ffn_width, "task_attention_heads": task_attention_heads}
    if not student_asked(trunk_layers, branch_layers, task_branch_layers, ffn_width, attention_heads, **narrower):
        if resume:
            raise FinechainError("--resume continues an interrupted distillation, and no student is asked for", fix="drop --resume")
        if not int8 and storage is None:
            raise FinechainError(
                "nothing to do",
                fix="pass --int8, --fp16, --bf16, --trunk-layers N, --branch-layers N, --ffn-width SHARE and/or --attention-heads N",
            )
        manifest = _weights(source, out, int8=int8, static=static, storage=storage, overwrite=overwrite, texts=texts)
        rows = [{"task": name, "largest output change": f"{entry.max_abs_diff:.2g}"} for name, entry in manifest.tasks.items()]
        return Compressed(manifest.steps, rows)
    if is_exported(source):
        raise FinechainError(
            "a student is distilled from a chain folder, not an exported one", file=source, fix="give the chain folder it was exported from"
        )
    for share in (ffn_width, *(task_ffn_width or {}).values()):
        if share is not None:
            check_ffn_share(share)
    refuse_existing(out, overwrite)  # before the teacher is loaded and trained on
    teacher = Chain.from_pretrained(source, device="auto")
    trunk = teacher.split if trunk_layers is None else trunk_layers  # branch layers alone: the whole trunk is kept
    branch = teacher.num_layers - teacher.split if branch_layers is None else branch_layers
    run = distill_run(out)
    if not resume:  # an earlier run's checkpoint is not continued: start over
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    try:
        student = teacher.distil(
            trunk,
            branch,
            task_branch_layers=task_branch_layers,
            texts=texts or (),
            ffn_width=ffn_width,
            attention_heads=attention_heads,
            **narrower,
            progress=progress,
            run_dir=run,
            resume=resume,
            **distil_options,
        )
    except BaseException:  # stopped or failed: keep the run only if it holds something to resume
        if not distill_checkpointed(out):
            shutil.rmtree(run, ignore_errors=True)
        raise
    compression = student.model.compression or {}
    kept = compression["branch_layers_kept"]  # per task
    same = len({tuple(layers) for layers in kept.values()}) == 1
    branches = str(next(iter(kept.values()))) if same else ", ".join(f"{name} {layers}" for name, layers in kept.items())
    steps = [
        f"student: trunk layers {compression['trunk_layers_kept']} of {teacher.split}, "
        f"branch layers {branches} of {teacher.num_layers - teacher.split}"
        + (f", feed-forward neurons {width['kept']} of {width['of']} per layer" if (width := compression.get("ffn_width")) else "")
        + (f", attention heads {heads['kept']} of {heads['of']} per layer" if (heads := compression.get("attention_heads")) else "")
        + branch_narrowing(compression.get("branches", {}))
        + ", distilled"
    ]
    rows = []
    for name, record in student.records.items():
        metric = record.metric or ""
        before = (teacher.records[name].metrics or {}).get("validation", {}).get(metric)
        after = (record.metrics or {}).get("validation", {}).get(metric)
        shown = {"teacher (val)": before, "student (val)": after}  # "-": trained without validation data
        rows.append({"task": name, "metric": metric, **{k: "-" if v is None else f"{v:.4f}" for k, v in shown.items()}})
    if not int8 and storage is None:
        with building_folder(out, overwrite) as target:
            student.save_pretrained(target)
    else:
        with _staging(out, "student") as staging:
            student.save_pretrained(staging / "chain")
            steps = _weights(staging / "chain", out, int8=int8, static=static, storage=storage, overwrite=overwrite, texts=texts).steps
    shutil.rmtree(run, ignore_errors=True)  # the student is saved: nothing to resume
    return Compressed(steps, rows)


def _weights(
    source: Path, out: Path, *, int8: bool, static: bool, storage: Storage | None, overwrite: bool, texts: list[str] | None
) -> ExportManifest:
    """The export of ``source`` (a chain or an exported folder) with int8 weights (dynamic, or ``static``: calibrated
    on ``texts`` or the training texts), fp16 or bf16 storage (``storage``), or both, at ``out``."""
    from finechain.export.quantize import quantize_int8
    from finechain.export.static_int8 import quantize_static_int8

    def quantize(into: Path, overwrite: bool = False) -> ExportManifest:
        if static:
            return quantize_static_int8(source, into, texts=texts or None, overwrite=overwrite)
        return quantize_int8(source, into, overwrite=overwrite)

    if storage is None:
        return quantize(out, overwrite)
    if not int8:
        return store_half(source, out, storage, overwrite=overwrite)
    refuse_existing(out, overwrite)
    with _staging(out, "int8") as staging:
        quantize(staging / "int8")
        return store_half(staging / "int8", out, storage, overwrite=overwrite)


@contextmanager
def _staging(out: Path, what: str) -> Iterator[Path]:
    """A scratch folder beside ``out`` (so that flows naming other chains by relative path still find them), removed
    afterwards."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{what}.", dir=out.parent if out.parent.exists() else None))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
