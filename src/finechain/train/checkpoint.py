"""Training checkpoints without pickle: tensors in safetensors, the rest in JSON; swapped in atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from finechain.errors import FinechainError
from finechain.io import read_json, write_json
from finechain.model.weights import load_tensors, save_tensors


@contextmanager
def run_folder(run_dir: str | Path | None, prefix: str) -> Iterator[Path]:
    """``run_dir`` (kept, so a run can resume), or a temporary folder removed afterwards, also on errors.

    Example:
        >>> with run_folder(None, "finechain-x-") as path:
        ...     existed = path.is_dir()
        >>> existed, path.exists()
        (True, False)
    """
    if run_dir is not None:
        yield Path(run_dir)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    """Save and restore the whole training state under ``run_dir/checkpoint``.

    A new checkpoint is written to a side folder and swapped in with renames, so an interrupted
    write leaves the previous checkpoint intact.

    Example:
        >>> ckpt = Checkpointer(Path("runs/intent"), fingerprint="abc")  # doctest: +SKIP
        >>> ckpt.save(model, best_state, optimizer, scheduler, generator, loop_state)  # doctest: +SKIP
    """

    # the folders a run resumes from: the checkpoint, or the one before it while a new one is swapped in
    RESUMED_FROM: ClassVar[tuple[str, str]] = ("checkpoint", "checkpoint.old")

    def __init__(self, run_dir: Path, fingerprint: str) -> None:
        self.dir = run_dir / "checkpoint"
        self.fingerprint = fingerprint

    def _current(self) -> Path | None:
        for name in self.RESUMED_FROM:
            if (self.dir.with_name(name) / "state.json").is_file():
                return self.dir.with_name(name)
        return None

    @classmethod
    def runs_under(cls, folder: Path) -> set[Path]:
        """The run folders anywhere under ``folder`` (a run's folder or one of many runs) that hold a complete checkpoint.

        Example:
            >>> import tempfile
            >>> Checkpointer.runs_under(Path(tempfile.mkdtemp()))
            set()
        """
        return {path.parent.parent for name in cls.RESUMED_FROM for path in folder.glob(f"**/{name}/state.json")}

    def exists(self) -> bool:
        """Whether a complete checkpoint is present."""
        return self._current() is not None

    def remove(self) -> None:
        """Delete the checkpoint (and any half-swapped one): a run whose result is saved, or dropped, has nothing left
        to resume."""
        for name in (*self.RESUMED_FROM, "checkpoint.new"):
            shutil.rmtree(self.dir.with_name(name), ignore_errors=True)

    def save(
        self,
        model: nn.Module,
        best: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
        state: Any,
        extra: dict[str, Any] | None = None,
        average: dict[str, torch.Tensor] | None = None,
        epoch_generator: torch.Tensor | None = None,
    ) -> None:
        """Write every piece of state (``state``: the loop's counters, a dataclass; ``extra``: more JSON, such as the
        loss scaler's; ``average``: the weights' moving average, if training keeps one; ``epoch_generator``: the
        generator's state before the current epoch's batches were drawn, to draw them again when resuming inside it),
        then swap the folder in."""
        staging = self.dir.with_name("checkpoint.new")
        shutil.rmtree(staging, ignore_errors=True)
        save_tensors(staging / "model.safetensors", model.state_dict())
        save_tensors(staging / "best.safetensors", best)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        if epoch_generator is not None:
            rng["epoch_generator"] = epoch_generator
        save_tensors(staging / "optimizer.safetensors", opt_tensors)
        save_tensors(staging / "rng.safetensors", rng)
        if average is not None:
            save_tensors(staging / "average.safetensors", average)
        write_json(
            staging / "state.json",
            {
                "fingerprint": self.fingerprint,
                "loop": asdict(state),
                "optimizer": opt_meta,
                "scheduler": scheduler.state_dict(),
                "extra": extra or {},
            },
        )
        old = self.dir.with_name("checkpoint.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(old)
        staging.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], torch.Tensor | None]:
        """Restore everything saved by :meth:`save`; return the loop's counters, the best weights, the extra JSON and
        the generator's state before the current epoch's batches were drawn (None if not saved)."""
        folder = self._current()
        if folder is None:
            raise FinechainError("no checkpoint to resume from", file=self.dir, fix="run without --resume")
        meta = read_json(folder / "state.json")
        if meta["fingerprint"] != self.fingerprint:
            raise FinechainError(
                "the checkpoint was made with different data or settings",
                file=folder,
                fix="resume with the same data and settings (spec, files, options), or run without --resume to start over",
            )
        device = next(model.parameters()).device
        model.load_state_dict(load_tensors(folder / "model.safetensors", device))
        optimizer.load_state_dict(_unflatten_optimizer(load_tensors(folder / "optimizer.safetensors", device), meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        rng = load_tensors(folder / "rng.safetensors")
        generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        return meta["loop"], load_tensors(folder / "best.safetensors", device), meta.get("extra", {}), rng.get("epoch_generator")

    def load_average(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The weights' moving average saved with the current checkpoint (the run's settings, in its fingerprint, say
        whether it keeps one)."""
        folder = self._current()
        if folder is None or not (folder / "average.safetensors").is_file():
            raise FinechainError("the checkpoint holds no weight average", file=self.dir, fix="run without --resume to start over")
        return load_tensors(folder / "average.safetensors", device)


# Left out of fingerprints. Data paths: the data's digest stands for their content. min_steps: what it changes (the
# passes per epoch of a new tail) is hashed by the run it changes, so runs it does not change still resume.
UNHASHED_TRAINING = {"min_steps", "cuda_graphs"}
UNHASHED_SPEC: dict[str, Any] = {"train": True, "dev": True, "test": True, "training": UNHASHED_TRAINING}


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able run settings, to refuse resuming a different run.

    Example:
        >>> fingerprint({"a": 1}) == fingerprint({"a": 1})
        True
    """
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
