"""The engine's ``forward`` on a PyTorch :class:`~finechain.model.chain_model.ChainModel`: padded NumPy batches in, the
trunk once per batch, then each requested task's tail on the rows that asked for it. On a CPU a batch of mixed lengths
runs packed (:mod:`finechain.model.packing`): its texts end to end in a few rows, no padding computed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from finechain.data.batching import index_tensor
from finechain.data.tokens import CPU_PASS_TOKENS
from finechain.model.chain_model import ChainModel
from finechain.model.packing import Packing, plan_packing
from finechain.model.precision import autocast_context


class TorchRunner:
    """Runs batches on ``model``, each under the precision it is given (``auto``, ``fp32``, ``bf16``, ``fp16``).

    Results stay on the model's device until :meth:`fetch`: on a GPU every batch is queued before any is waited for.

    Example:
        >>> runner = TorchRunner(model)  # doctest: +SKIP
        >>> out = runner.run(ids, mask, {"intent": None})  # doctest: +SKIP
        >>> runner.fetch(out["intent"]).shape  # doctest: +SKIP
        (2, 77)
    """

    pass_tokens = CPU_PASS_TOKENS  # a pass's own cost on a CPU, in tokens (data.tokens)
    packs = True  # on a CPU a batch's padding is not computed (model.packing): batches need not be cut by length
    keeps_states = True  # run(..., kept=...) keeps a batch's trunk states for run_kept

    def __init__(self, model: ChainModel) -> None:
        self.model = model
        self.hidden_size = int(model.encoder_config.hidden_size)

    @property
    def device_type(self) -> str:
        """``cuda`` or ``cpu``: how inference batches are planned."""
        return self.model.device.type

    def _inputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.model.device
        tensors = (torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        if device.type == "cuda":  # pinned memory: the copy does not wait for the GPU's queued work
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)  # type: ignore[return-value]
        return tensors

    @torch.inference_mode()
    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        wanted: Mapping[str, list[int] | None],
        precision: str = "auto",
        observer: Callable[[str, float], None] | None = None,
        kept: list[Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per task in ``wanted``, its outputs for the rows listed (``None``: every row), float32 on the device;
        ``observer`` is told each task's compute seconds (host time on GPUs). With ``kept``, the batch's trunk states
        are appended to it, for :meth:`run_kept`."""
        model = self.model.eval()
        ids, mask = self._inputs(input_ids, attention_mask)
        asked = model.tasks if kept is not None else wanted  # kept states must serve any task later
        packing = plan_packing(mask, self.hidden_size)
        with autocast_context(model.device, precision):
            states = model.trunk_states(ids, mask, any(model.tasks[n].needs_trunk_states for n in asked), packing)
            if kept is not None:
                kept.append((states, mask, packing))
            return self._tails(states, mask, packing, wanted, observer)

    @torch.inference_mode()
    def run_kept(
        self,
        handle: Any,
        wanted: Mapping[str, list[int] | None],
        precision: str = "auto",
        observer: Callable[[str, float], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Like :meth:`run`, on trunk states that ``run(..., kept=...)`` kept: only the tasks' tails run."""
        states, mask, packing = handle
        with autocast_context(self.model.device, precision):
            return self._tails(states, mask, packing, wanted, observer)

    def _tails(
        self,
        states: list[torch.Tensor],
        mask: torch.Tensor,
        packing: Packing | None,
        wanted: Mapping[str, list[int] | None],
        observer: Callable[[str, float], None] | None,
    ) -> dict[str, torch.Tensor]:
        """Each wanted task's tail on the trunk states of the rows that asked for it (``states`` packed by
        ``packing``, when there is one)."""
        results: dict[str, torch.Tensor] = {}
        unpacked: dict[int, torch.Tensor] = {}  # trunk states back in the padded layout, once per batch, for subsets

        def padded(depth: int) -> torch.Tensor:
            if packing is None:
                return states[depth]
            if depth not in unpacked:
                unpacked[depth] = packing.unpack(states[depth])
            return unpacked[depth]

        for name, rows in wanted.items():
            task, timed = self.model.tasks[name], time.perf_counter()
            depths = range(len(states)) if task.needs_trunk_states else [len(states) - 1]
            if rows is None:
                result = task([states[d] for d in depths], mask, packing)
            else:  # only some rows of this batch asked for the task: their states, packed anew where that saves
                index = index_tensor(rows, self.model.device)
                given, subset_mask = [padded(d)[index] for d in depths], mask[index]
                subset = plan_packing(subset_mask, self.hidden_size)
                result = task(given if subset is None else [subset.pack(s) for s in given], subset_mask, subset)
            results[name] = result.float()
            if observer is not None:
                observer(name, time.perf_counter() - timed)
        return results

    def fetch(self, result: torch.Tensor) -> np.ndarray:
        """A result as a NumPy array on the host (waits for the device)."""
        return result.cpu().numpy()

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool, precision: str = "auto") -> np.ndarray:
        """The untouched backbone's mean-pooled sentence embeddings of one batch, float32 on the host."""
        model = self.model.eval()
        ids, mask = self._inputs(input_ids, attention_mask)
        with autocast_context(model.device, precision):
            vectors = model.sentence_embeddings(ids, mask).float()
        return (torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors).cpu().numpy()
