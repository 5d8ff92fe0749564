"""One training loop for every strategy: a new task's tail on cached trunk states, joint multi-task training of the
trunk and tails, and whatever comes next. It is a generator: ``run()`` yields a :class:`Check` at each validation
check, and :class:`Hook` objects observe every batch, check and epoch, and may stop the run (early stopping, a search
trial's pruning).

What varies between strategies is handed in: the ``step`` (forward, objective, backward of one batch), the batches
of an epoch, and the ``evaluate`` callable. The loop owns the rest: gradient accumulation, clipping, loss scaling
(fp16), the optimizer and schedule, evenly spaced validation checks, keeping the best check's weights, a checkpoint
at every validation check (``resume`` continues exactly, from the middle of an epoch too), and refusing to go on when
the loss stops being a number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from finechain.errors import FinechainError
from finechain.evaluate.metrics import is_better
from finechain.train.averaging import WeightAverage
from finechain.train.checkpoint import Checkpointer


class TrainingDiverged(FinechainError):
    """The training loss or the weights stopped being finite numbers; nothing of the run is saved."""


@dataclass
class LoopState:
    """Loop counters that a resumed run continues from."""

    epoch: int = 0  # whole epochs done
    batch: int = 0  # batches done of the current epoch (a run checkpointed at a check inside an epoch goes on from there)
    epoch_loss: float = 0.0  # the sum of those batches' losses (the epoch's running mean goes on from it)
    step: int = 0
    best: float | None = None
    best_epoch: float | None = None  # in epochs: 1.5 = the check halfway through the second epoch
    bad_checks: int = 0  # validation checks in a row without a better metric
    seconds: float = 0.0  # training time so far (hooks, checkpoints and callers' time between checks left out)

    def improves(self, metric: str, value: float, epochs: float) -> bool:
        """Record a validation check after ``epochs`` epochs; True (and it becomes the best) if it beats the best so far.

        Example:
            >>> state = LoopState()
            >>> state.improves("accuracy", 0.8, 0.5), state.improves("accuracy", 0.7, 1), (state.best_epoch, state.bad_checks)
            (True, False, (0.5, 1))
        """
        if is_better(metric, value, self.best):
            self.best, self.best_epoch, self.bad_checks = value, epochs, 0
            return True
        self.bad_checks += 1
        return False


@dataclass(frozen=True)
class Evaluation:
    """A validation check's result: the selection metric's value, every score, and the outputs (to keep the best's)."""

    value: float
    scores: dict[str, Any] = field(default_factory=dict)
    outputs: Any = None


@dataclass(frozen=True)
class Check:
    """What the loop yields at each validation check."""

    epoch: float  # epochs of training so far, e.g. 1.5
    step: int  # optimizer steps so far
    loss: float  # mean training loss of this epoch so far
    evaluation: Evaluation
    improved: bool
    best: float | None
    seconds: float  # training seconds of the whole run so far (a resumed run includes the earlier part)
    elapsed: float  # seconds since this call started, hooks left out


class Step(Protocol):
    """One batch's forward, objective and backward (gradients add into ``.grad``); returns the detached loss."""

    def __call__(self, batch: Any) -> torch.Tensor: ...

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...


class Hook:
    """Observes a run; subclass and override what you need. Call ``loop.stop(reason)`` to end the run at the next
    epoch's end (the best check's weights are still kept)."""

    def on_start(self, loop: TrainingLoop) -> None:
        """Before the first batch of :meth:`TrainingLoop.run` (after a resume: ``loop.state`` says where it stands)."""

    def on_batch(self, loop: TrainingLoop, loss: float | None) -> None:
        """After every batch; ``loss`` is the epoch's running loss every 20 batches (reading it waits for a GPU)."""

    def on_check(self, loop: TrainingLoop, check: Check) -> None:
        """After every validation check."""

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        """After every epoch, once its checkpoint is written."""


class EarlyStopping(Hook):
    """Stop at an epoch's end after ``patience`` epochs' worth of checks in a row without a better metric (0: never).

    Example:
        >>> EarlyStopping(2).patience
        2
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        """Stop when the last ``patience`` epochs brought nothing better."""
        if self.patience and loop.state.bad_checks >= self.patience * loop.checks_per_epoch:
            loop.stop(f"no better validation {loop.metric} in {self.patience} epochs")


class HeadFirst(Hook):
    """Staged training: the first ``epochs`` epochs train only what is not in ``frozen`` (the head), then the frozen
    parameters train too, at their own learning rate. Parameters of ``frozen`` that do not train anyway are left alone.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> hook = HeadFirst(1, layer.parameters())
        >>> class Loop: state = LoopState()
        >>> hook.on_start(Loop()); layer.weight.requires_grad
        False
        >>> Loop.state.epoch = 1; hook.on_epoch_end(Loop()); layer.weight.requires_grad
        True
    """

    def __init__(self, epochs: int, frozen: Iterator[nn.Parameter] | Sequence[nn.Parameter]) -> None:
        self.epochs = epochs
        self.params = [p for p in frozen if p.requires_grad]

    def _set(self, loop: TrainingLoop) -> None:
        for param in self.params:
            param.requires_grad_(loop.state.epoch >= self.epochs)

    def on_start(self, loop: TrainingLoop) -> None:
        """Freeze, unless a resumed run is past the head-only epochs."""
        self._set(loop)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        """Release the frozen parameters once the head-only epochs are done."""
        self._set(loop)

    def release(self) -> None:
        """Let the frozen parameters train again (after the run, however it ended)."""
        for param in self.params:
            param.requires_grad_(True)


def check_points(batches: int, per_epoch: int, accumulation: int = 1) -> list[int]:
    """After how many of an epoch's ``batches`` the validation split is scored: ``per_epoch`` evenly spaced points
    on optimizer-step boundaries (every ``accumulation`` batches), the last one at the end of the epoch.

    Example:
        >>> check_points(85, 2), check_points(85, 3, accumulation=4), check_points(1, 2)
        ([43, 85], [32, 60, 85], [1])
    """
    points = {min(batches, -(-math.ceil(batches * k / per_epoch) // accumulation) * accumulation) for k in range(1, per_epoch + 1)}
    return sorted(points)


def epoch_progress(done: int, check: int, checks: int) -> float:
    """Epochs of training at a validation check: ``done`` whole epochs plus the ``check``-th of ``checks`` in this one.

    Example:
        >>> epoch_progress(1, 1, 2), epoch_progress(1, 2, 2), epoch_progress(0, 1, 3)
        (1.5, 2, 0.333)
    """
    value = round(done + check / checks, 3)
    return int(value) if value.is_integer() else value


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s weights."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class TrainingLoop:
    """Trains ``module`` for ``epochs`` epochs of ``batches_per_epoch`` batches from ``epoch_batches(generator)``.

    ``step(batch)`` runs one batch (see :class:`Step`); ``evaluate()`` scores the validation data and returns an
    :class:`Evaluation` whose ``value`` is the selection ``metric``. ``scaler`` is a ``torch.amp.GradScaler`` (fp16)
    or None. With a ``checkpointer`` the whole state is saved at each validation check and at each epoch's end, and
    :meth:`resume` restores it: a resumed run goes on from that batch of that epoch, to the same weights. With
    ``ema_decay`` the checks score a moving average of the weights (:class:`WeightAverage`), and the best is kept.

    Example:
        >>> loop = TrainingLoop(task, step, batches, evaluate, metric="accuracy", epochs=3, batches_per_epoch=10,
        ...                     optimizer=optimizer, scheduler=scheduler)  # doctest: +SKIP
        >>> history = list(loop.run())  # doctest: +SKIP
        >>> task.load_state_dict(loop.best_weights)  # doctest: +SKIP
    """

    def __init__(
        self,
        module: nn.Module,
        step: Step,
        epoch_batches: Callable[[torch.Generator], Sequence[Any]],
        evaluate: Callable[[], Evaluation],
        *,
        metric: str,
        epochs: int,
        batches_per_epoch: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator | None = None,
        scaler: torch.amp.GradScaler | None = None,
        accumulation: int = 1,
        max_grad_norm: float = 1.0,
        evaluations_per_epoch: int = 1,
        batch_size: Callable[[Any], int] = len,
        checkpointer: Checkpointer | None = None,
        hooks: Sequence[Hook] = (),
        ema_decay: float | None = None,
    ) -> None:
        self.module, self.step, self.epoch_batches, self.evaluate = module, step, epoch_batches, evaluate
        self.metric, self.epochs, self.batches_per_epoch = metric, epochs, batches_per_epoch
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.generator = generator if generator is not None else torch.Generator()
        self.accumulation, self.max_grad_norm = accumulation, max_grad_norm
        self.batch_size, self.checkpointer, self.hooks = batch_size, checkpointer, list(hooks)
        self.points = check_points(batches_per_epoch, evaluations_per_epoch, accumulation)
        self.average = WeightAverage(module, ema_decay) if ema_decay is not None else None
        self.state = LoopState()
        self.best_weights = snapshot(module)
        self.best_evaluation: Evaluation | None = None
        self.seen = 0  # examples trained on in this call
        self.stopped: str | None = None
        self.observed = 0.0  # seconds spent in hooks and in the caller between checks: not training time
        self.resumed_seconds = 0.0  # training time of the epochs before a resume
        self.epoch_generator: torch.Tensor | None = None  # ``generator``'s state before this epoch's batches were drawn

    @property
    def batches_done(self) -> int:
        """Batches trained so far, over all epochs (a resumed run's earlier ones included)."""
        return self.state.epoch * self.batches_per_epoch + self.state.batch

    @property
    def epoch_mean_loss(self) -> float | None:
        """The current epoch's mean training loss so far (None before its first batch): what a resumed run shows first."""
        return self.state.epoch_loss * self.accumulation / self.state.batch if self.state.batch else None

    @property
    def checks_per_epoch(self) -> int:
        """Validation checks in each epoch."""
        return len(self.points)

    def stop(self, reason: str) -> None:
        """End the run at the end of the current epoch."""
        self.stopped = reason

    def resume(self) -> bool:
        """Restore the checkpointed state, if there is one; True when a run was resumed."""
        if self.checkpointer is None or not self.checkpointer.exists():
            return False
        counters, self.best_weights, extra, self.epoch_generator = self.checkpointer.load(
            self.module, self.optimizer, self.scheduler, self.generator
        )
        self.state = LoopState(**counters)
        if self.average is not None:
            self.average.load_state_dict(self.checkpointer.load_average(next(self.module.parameters()).device))
        self.resumed_seconds = self.state.seconds
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        return True

    def start_from(self, evaluation: Evaluation, epochs: float = 0) -> None:
        """Make the current weights the candidate to beat (continuing an already trained tail: training can only improve
        on it)."""
        self.state.improves(self.metric, evaluation.value, epochs)
        self.best_weights, self.best_evaluation = snapshot(self.module), evaluation

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step.zero_grad(self.optimizer)
        if self.average is not None:
            self.average.update(self.state.step)
        self.state.step += 1

    def _observe(self, call: Callable[[], None]) -> None:
        """Run a hook (or hand control to the caller) without counting its time as training."""
        started = time.perf_counter()
        call()
        self.module.train()  # a hook may have switched to eval mode (attaching a tail does): training goes on
        self.observed += time.perf_counter() - started

    def _check_finite(self, loss: float) -> None:
        if math.isfinite(loss) and all(torch.isfinite(p).all() for p in self.module.parameters() if p.requires_grad):
            return
        raise TrainingDiverged(
            f"training diverged at optimizer step {self.state.step}: the loss is {loss}, or a weight is no longer a finite number",
            fix="lower the learning rate (or use precision: fp32); nothing of this run was saved",
        )

    def _epoch_batches(self) -> Sequence[Any]:
        """This epoch's batches: drawn anew, or, resuming inside an epoch, drawn again from the generator's state
        before they were first drawn (the generator then goes on from where the checkpoint left it)."""
        if self.state.batch == 0 or self.epoch_generator is None:
            self.epoch_generator = self.generator.get_state()
            return self.epoch_batches(self.generator)
        now = self.generator.get_state()
        self.generator.set_state(self.epoch_generator)
        batches = self.epoch_batches(self.generator)
        self.generator.set_state(now)
        return batches

    def _save(self, state: LoopState) -> float:
        """Checkpoint the whole training state with the loop's counters ``state``; return the seconds it took."""
        if self.checkpointer is None:
            return 0.0
        started = time.perf_counter()
        extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None and self.scaler.is_enabled() else {}
        average = self.average.state_dict() if self.average is not None else None
        self.checkpointer.save(
            self.module, self.best_weights, self.optimizer, self.scheduler, self.generator, state, extra, average, self.epoch_generator
        )
        return time.perf_counter() - started

    def run(self) -> Iterator[Check]:
        """Train to the end (or until stopped); yield a :class:`Check` after each validation check."""
        started = time.perf_counter()
        for hook in self.hooks:
            self._observe(lambda hook=hook: hook.on_start(self))
        while self.state.epoch < self.epochs and self.stopped is None:
            epoch_started, observed_before, saving = time.perf_counter(), self.observed, 0.0
            self.module.train()
            device = next(self.module.parameters()).device
            running = torch.tensor(self.state.epoch_loss, device=device)  # a run resumed inside an epoch goes on from its sum
            batches, skipped = self._epoch_batches(), self.state.batch
            for i, batch in enumerate(batches):
                if i < skipped:  # trained before the checkpoint this run resumed from
                    continue
                running += self.step(batch)
                if (i + 1) % self.accumulation == 0 or i + 1 == len(batches):
                    self._optimizer_step()
                self.seen += self.batch_size(batch)
                sampled = float(running) * self.accumulation / (i + 1) if i % 20 == 0 else None
                for hook in self.hooks:
                    self._observe(lambda hook=hook, sampled=sampled: hook.on_batch(self, sampled))
                if i + 1 not in self.points:
                    continue
                loss = float(running) * self.accumulation / (i + 1)
                self._check_finite(loss)
                with self.average.swapped_in() if self.average is not None else nullcontext():  # the average is scored and kept
                    evaluation = self.evaluate()
                    epochs = epoch_progress(self.state.epoch, self.points.index(i + 1) + 1, len(self.points))
                    improved = self.state.improves(self.metric, evaluation.value, epochs)
                    if improved:
                        self.best_weights, self.best_evaluation = snapshot(self.module), evaluation
                self.module.train()
                in_epoch = time.perf_counter() - epoch_started - (self.observed - observed_before) - saving
                check = Check(
                    epochs,
                    self.state.step,
                    loss,
                    evaluation,
                    improved,
                    self.state.best,
                    round(self.state.seconds + in_epoch, 3),
                    round(time.perf_counter() - started - self.observed, 3),
                )
                for hook in self.hooks:
                    self._observe(lambda hook=hook, check=check: hook.on_check(self, check))
                if i + 1 < len(batches):  # inside the epoch (its end is checkpointed below, once the epoch is counted)
                    saving += self._save(replace(self.state, batch=i + 1, epoch_loss=float(running), seconds=self.state.seconds + in_epoch))
                paused = time.perf_counter()
                yield check
                self.module.train()
                self.observed += time.perf_counter() - paused
            self.state.epoch, self.state.batch, self.state.epoch_loss = self.state.epoch + 1, 0, 0.0
            self.state.seconds += time.perf_counter() - epoch_started - (self.observed - observed_before) - saving
            self._save(self.state)
            for hook in self.hooks:
                self._observe(lambda hook=hook: hook.on_epoch_end(self))
