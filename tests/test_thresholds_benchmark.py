"""The multi-label thresholds benchmark's ways of choosing thresholds, on outputs made up to tell them apart."""

from __future__ import annotations

import numpy as np

from benchmarks.thresholds import thresholds
from finechain.heads.multilabel import MultiLabelHead


def test_each_way_chooses_the_thresholds_it_names() -> None:
    """Label a is common (8 validation examples) and best cut between 0.18 and 0.37, label b is rare (2
    examples) and best cut between 0.73 and 0.87;
    the shared threshold serves both labels' examples best at one value, used for b by the hybrid."""
    head = MultiLabelHead(["a", "b"])
    probs = np.array([[0.37, 0.12]] * 8 + [[0.18, 0.87]] * 2 + [[0.08, 0.73]] * 10)
    truth = np.array([[1, 0]] * 8 + [[0, 1]] * 2 + [[0, 0]] * 10)
    outputs = list(np.log(probs / (1 - probs)))
    assert thresholds("fixed", head, outputs, truth) == [0.5, 0.5]
    own = thresholds("per-label", head, outputs, truth)
    assert 0.18 < own[0] <= 0.37 and 0.73 < own[1] <= 0.87
    shared = thresholds("shared", head, outputs, truth)
    assert shared[0] == shared[1] and 0.18 < shared[0] <= 0.37  # a's 8 examples right beats b's 2
    assert thresholds("per-label-5", head, outputs, truth) == [own[0], shared[1]]
