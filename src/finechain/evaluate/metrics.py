"""Task metrics, computed with scikit-learn and SciPy (imported when a metric is first computed: reading a spec or
decoding predictions never pays for them)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

LOWER_IS_BETTER = {"mae", "rmse", "loss"}


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` for ``metric`` (``rmse``/``mae`` go down, the rest up).

    Example:
        >>> is_better("accuracy", 0.9, 0.8), is_better("rmse", 0.9, 0.8)
        (True, False)
    """
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new < old if metric in LOWER_IS_BETTER else new > old


def _per_class(labels: list[str], precision: Any, recall: Any, f1: Any, support: Any) -> dict[str, dict[str, float]]:
    """Each label's precision, recall, F1 and support, as the reports show them."""
    return {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top / bottom``, 0 where ``bottom`` is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(top, bottom, out=np.zeros(np.shape(top), dtype=float), where=np.asarray(bottom) != 0)


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro/micro/weighted F1, per-class P/R/F1/support and the confusion matrix: all from the one confusion
    matrix (scikit-learn's), as scikit-learn's own scores define them (``zero_division=0``); computed at every validation
    check, where six scikit-learn calls cost more than a small task's forward pass. Macro F1 is the mean over the
    labels that occur in the gold labels or the predictions (scikit-learn's default): a label a small file does not
    hold, and that is never predicted, is no error and does not pull the mean down.

    Example:
        >>> m = classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos", "other"])
        >>> round(m["accuracy"], 3), m["per_class"]["pos"]["support"], round(m["macro_f1"], 3)
        (0.667, 2, 0.667)
    """
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    tp, predicted, actual = np.diag(matrix).astype(float), matrix.sum(axis=0), matrix.sum(axis=1)
    precision, recall, f1 = _ratio(tp, predicted), _ratio(tp, actual), _ratio(2 * tp, predicted + actual)
    return {
        "accuracy": float(_ratio(tp.sum(), len(y_true))),
        "macro_f1": _present_mean(f1, predicted + actual),
        "micro_f1": float(_ratio(2 * tp.sum(), predicted.sum() + actual.sum())),
        "weighted_f1": float(_ratio((f1 * actual).sum(), actual.sum())),
        "per_class": _per_class(labels, precision, recall, f1, actual),
        "confusion_matrix": matrix.tolist(),
        "n": len(y_true),
    }


def _present_mean(f1: np.ndarray, occurrences: np.ndarray) -> float:
    """The mean F1 of the labels that occur (in the gold labels or the predictions); 0 when none does."""
    present = np.asarray(occurrences) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Micro/macro/sample F1, subset accuracy and per-label P/R/F1 for 0/1 indicator matrices; macro F1 over the
    labels given or predicted at least once, as for single-label classification.

    Example:
        >>> m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[1, 0], [1, 0]]), ["a", "b"])
        >>> m["subset_accuracy"], round(m["micro_f1"], 3)
        (0.5, 0.8)

    A text with no gold labels and none predicted is a perfect sample (samples F1 1, not 0):

        >>> multilabel_metrics(np.array([[0, 0], [1, 0]]), np.array([[0, 0], [1, 0]]), ["a", "b"])["samples_f1"]
        1.0
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": _present_mean(np.asarray(f1), np.asarray(y_true).sum(axis=0) + np.asarray(y_pred).sum(axis=0)),
        "samples_f1": float(f1_score(y_true, y_pred, average="samples", zero_division=1.0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": _per_class(labels, precision, recall, f1, support),
        "n": len(y_true),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, R², Pearson and Spearman correlation.

    Example:
        >>> m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
        >>> round(m["mae"], 3), round(m["spearman"], 3)
        (0.333, 1.0)
    """
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    constant = bool(np.std(y_true) < 1e-9 or np.std(y_pred) < 1e-9 * max(1.0, float(np.abs(y_pred).max(initial=0.0))))
    with warnings.catch_warnings():  # scipy's own constancy test is relative: near-constant input is NaN, not a warning
        warnings.simplefilter("ignore", ConstantInputWarning)
        pearson = float("nan") if constant else float(pearsonr(y_true, y_pred).statistic)
        spearman = float("nan") if constant else float(spearmanr(y_true, y_pred).statistic)
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
        "pearson": pearson,
        "spearman": spearman,
        "n": len(y_true),
    }
