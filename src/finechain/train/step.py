"""One training batch's forward, loss and backward: eagerly, or on a CUDA GPU as a replayed CUDA graph.

On a GPU a small model's step is mostly host time: Python and PyTorch dispatch of about a thousand operations
(measured on an H100: ~2.5 ms of kernels, ~15 ms of host work per step). A CUDA graph records a step's kernels
once and replays them with one call. Graphs need fixed shapes, so full batches are padded to a few widths
(multiples of :data:`WIDTH_STEP` tokens; padding is masked, so the loss is the same) and each (width) gets its own
graph, captured the second time that width comes up (the first runs eagerly, as a warm-up). The graph covers
gathering the cached trunk states, the branch, head, loss and backward, which adds into gradient tensors that live
for the whole run; clipping, the optimizer and the schedule stay eager (a few fused kernels).
"""

from __future__ import annotations

import warnings

import torch

from finechain.data.batching import index_tensor
from finechain.errors import short_reason
from finechain.model.precision import autocast_context
from finechain.model.task import TaskModel
from finechain.train.features import TrunkFeatures
from finechain.train.objectives import HeadLoss, Objective, StepInputs

WIDTH_STEP = 16  # graphed batches are padded to a multiple of this many tokens (capped at the longest sequence)


def padded_width(width: int, longest: int, step: int = WIDTH_STEP) -> int:
    """The width a graphed batch is padded to: ``width`` rounded up to a multiple of ``step``, at most ``longest``.

    Example:
        >>> padded_width(5, 70), padded_width(16, 70), padded_width(65, 70)
        (16, 16, 70)
    """
    return min(-(-width // step) * step, longest)


class BatchStep:
    """Forward, objective (divided by ``accumulation``) and backward of one batch of cached trunk states; gradients
    add into ``.grad``.

    With ``graphs`` (honoured on CUDA with the trunk states cached in GPU memory, an objective that is graph-safe and
    no fp16 loss scaling), full batches replay a CUDA graph per padded width; other batches, and every batch on CPU,
    run eagerly. Call :meth:`zero_grad` after each optimizer step instead of ``optimizer.zero_grad``: graphed steps
    write into gradient tensors that must stay put. ``scaler`` (fp16) scales the loss before the backward pass.

    Example:
        >>> step = BatchStep(task, features, targets, "auto", batch_size=32)  # doctest: +SKIP
        >>> loss = step([4, 8, 15, 16])  # a detached scalar on the device  # doctest: +SKIP
        >>> optimizer.step(); step.zero_grad(optimizer)  # doctest: +SKIP
    """

    def __init__(
        self,
        task: TaskModel,
        features: TrunkFeatures,
        targets: torch.Tensor,
        precision: str,
        batch_size: int,
        accumulation: int = 1,
        graphs: bool = True,
        objective: Objective | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.task, self.features, self.targets = task, features, targets
        self.precision, self.batch_size, self.accumulation = precision, batch_size, accumulation
        self.objective = objective or HeadLoss()
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.device = features.device
        safe = self.objective.graph_safe and self.scaler is None
        self.graphs = graphs and safe and self.device.type == "cuda" and features.cache == "memory"
        self.longest = max(features.lengths, default=1)
        self._captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._warmed: set[int] = set()
        self._index = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # the full batch every graph reads
        self._params = [p for p in task.parameters() if p.requires_grad]
        if self.graphs:
            for param in self._params:  # gradients that graphs write into, allocated once for the whole run
                param.grad = torch.zeros_like(param)
            self._stream = torch.cuda.Stream(self.device)
            self._pool: tuple[int, int] | None = None  # one memory pool for all graphs: they never run at once

    def __call__(self, batch: list[int]) -> torch.Tensor:
        """Run ``batch`` (dataset indices); return its loss, detached."""
        if not self.graphs or len(batch) != self.batch_size:
            hidden, mask = self.features.batch(batch)
            index = index_tensor(batch, self.device)
            return self._loss_backward(hidden, mask, self.targets[index], index)
        width = padded_width(max(self.features.lengths[i] for i in batch), self.longest)
        self._index.copy_(torch.as_tensor(batch, dtype=torch.long).pin_memory(), non_blocking=True)
        if width not in self._captured:
            if width not in self._warmed:  # first time at this width: eagerly, on the stream graphs are captured on
                self._warmed.add(width)
                return self._warm_up(width)
            if not self._capture(width):
                return self(batch)
        graph, loss = self._captured[width]
        graph.replay()
        return loss.clone()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear gradients after an optimizer step: in place while graphs hold them, else by dropping them."""
        optimizer.zero_grad(set_to_none=not self.graphs)

    def _graph_body(self, width: int) -> torch.Tensor:
        """The graphed work for a full batch of width ``width`` whose indices are in ``self._index``."""
        hidden, mask = self.features.gather(self._index, width)
        return self._loss_backward(hidden, mask, self.targets[self._index], self._index, cache=False)

    def _loss_backward(
        self, hidden: torch.Tensor | list[torch.Tensor], mask: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, cache: bool = True
    ) -> torch.Tensor:
        with autocast_context(self.device, self.precision, cache=cache):  # no cached casts across graph replays
            loss = self.objective.loss(self.task, StepInputs(hidden, mask, targets, index)) / self.accumulation
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()  # detached: no autograd graph outlives its step

    def _warm_up(self, width: int) -> torch.Tensor:
        """:meth:`_graph_body` run eagerly on the capture stream (first use of a width: kernels chosen, memory set up)."""
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            loss = self._graph_body(width)
        main.wait_stream(self._stream)
        loss.record_stream(main)
        return loss

    def _capture(self, width: int) -> bool:
        """Record the graph for ``width``; on failure warn, turn graphs off and return False."""
        grads = [p.grad for p in self._params]
        graph = torch.cuda.CUDAGraph()
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                loss = self._graph_body(width)
            if any(p.grad is not g for p, g in zip(self._params, grads, strict=True)):
                raise RuntimeError("the backward pass replaced gradient tensors instead of adding into them")
        except RuntimeError as error:
            for param, grad in zip(self._params, grads, strict=True):
                param.grad = grad
            message = short_reason(error)
            warnings.warn(f"CUDA graph capture failed, training continues without graphs: {message}", RuntimeWarning, stacklevel=3)
            self.graphs = False
            self._recover()
            return False
        main.wait_stream(self._stream)
        self._pool = graph.pool()
        self._captured[width] = (graph, loss)
        return True

    def _recover(self) -> None:
        """Make eager steps safe after a failed capture. A capture that fails leaves PyTorch's CUDA random generator
        marked as capturing (its capture epilogue never ran), and the next eager dropout fails with "Offset increment
        outside graph capture encountered unexpectedly". Capturing an empty graph runs the generator's prologue and
        epilogue once more, which clears the mark."""
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=self._stream):
                pass
        except RuntimeError as error:  # nothing more to try: eager dropout may fail next, with PyTorch's own message
            warnings.warn(f"could not reset CUDA graph capture state: {error}", RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize(self.device)
