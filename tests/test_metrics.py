"""Task metrics: the classification scores computed from one confusion matrix are scikit-learn's own scores."""

from __future__ import annotations

import random
import warnings

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from finechain.evaluate.metrics import classification_metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_scikit_learns_scores(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):  # classes absent from the gold labels, from the predictions, or from both
        k, n = rng.randint(2, 9), rng.randint(1, 60)  # a task has two classes or more
        gold = [rng.randrange(k) for _ in range(n)]
        predicted = [rng.randrange(k) if rng.random() < 0.5 else g for g in gold]
        labels = [f"label{i}" for i in range(k)]
        ids = list(range(k))
        ours = classification_metrics(gold, predicted, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns about a single label; the scores stand
            assert ours["accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
            for average in ("micro", "weighted"):
                expected = f1_score(gold, predicted, labels=ids, average=average, zero_division=0)
                assert ours[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)
            # macro: scikit-learn's default, over the labels in the gold labels or the predictions (not the absent ones)
            assert ours["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0), abs=1e-12)
            precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=ids, zero_division=0)
        for i, label in enumerate(labels):
            row = ours["per_class"][label]
            assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]), abs=1e-12)
            assert row["support"] == support[i]


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_macro_f1_counts_the_labels_that_occur(seed: int) -> None:
    """Macro F1 of a multi-label task: the mean of scikit-learn's F1 of each label given or predicted at least once."""
    import numpy as np

    from finechain.evaluate.metrics import multilabel_metrics

    rng = np.random.default_rng(seed)
    for _ in range(30):
        k, n = int(rng.integers(2, 8)), int(rng.integers(1, 30))
        gold = (rng.random((n, k)) < 0.2).astype(int)
        predicted = np.where(rng.random((n, k)) < 0.3, 1 - gold, gold)
        occurs = (gold.sum(0) + predicted.sum(0)) > 0
        per_label = [f1_score(gold[:, j], predicted[:, j], zero_division=0) for j in np.flatnonzero(occurs)]
        expected = float(np.mean(per_label)) if per_label else 0.0
        assert multilabel_metrics(gold, predicted, [f"l{i}" for i in range(k)])["macro_f1"] == pytest.approx(expected, abs=1e-12)
