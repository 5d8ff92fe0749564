"""An exponential moving average of the weights being trained (``training.ema_decay``): validation checks score the
average, and the best check's average is what training keeps. It smooths the last steps' noise out of the kept
weights; on the public tagging sets it neither helped nor hurt (docs/benchmarks.md), so it is off by default. The loop
checkpoints it, so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def warmed_decay(decay: float, step: int) -> float:
    """The decay of update ``step`` (0-based): ``decay``, but no more than ``(1 + step) / (10 + step)``, so that the
    first updates follow the weights closely (a short run is not pinned to its random start).

    Example:
        >>> warmed_decay(0.998, 0), round(warmed_decay(0.998, 90), 3), warmed_decay(0.998, 10_000)
        (0.1, 0.91, 0.998)
    """
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """The moving average of ``module``'s trainable weights (those that require gradients when it is made).

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> average = WeightAverage(layer, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = layer.weight.add_(1.0)
        >>> average.update(step=100)  # decay 0.5: halfway to the new weights
        >>> with average.swapped_in():
        ...     moved = layer.weight.detach().clone()
        >>> bool(torch.allclose(layer.weight - moved, torch.full((1, 2), 0.5)))
        True
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.averaged = [p.detach().clone() for p in self.params]

    def update(self, step: int) -> None:
        """Move the average towards the current weights after optimizer step ``step`` (0-based)."""
        if self.params:  # torch's EMA update (it runs without autograd)
            get_ema_multi_avg_fn(warmed_decay(self.decay, step))(self.averaged, [p.detach() for p in self.params], None)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Put the average in the module's weights for the block (to score or copy it), then the trained weights back."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's tensors by position (for a checkpoint)."""
        return {str(i): t for i, t in enumerate(self.averaged)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if len(tensors) != len(self.averaged):
            raise ValueError(f"the checkpoint's average holds {len(tensors)} tensors, this model {len(self.averaged)}")
        with torch.no_grad():
            for i, t in enumerate(self.averaged):
                t.copy_(tensors[str(i)])
