"""Look at a task's data before training: sizes, labels, lengths, and the problems that are not errors."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from finechain.data.prepare import Split, TaskData
from finechain.heads import Head

RARE_EXAMPLES = 10  # a label with fewer training examples than this gets a warning
SMALL_VALIDATION = 100  # fewer validation examples than this: model choice and early stopping are noisy


@dataclass
class DataCheck:
    """What ``finechain check`` reports for one task."""

    task: str
    type: str
    rows: dict[str, int]
    validation_source: str
    labels: int
    majority: float | None  # share of the commonest validation label: the accuracy of always guessing it
    over_length: dict[str, float]  # per split, the share of texts longer than max_length tokens
    longest: int  # tokens of the longest training text
    warnings: list[str] = field(default_factory=list)


def _token_counts(tokenizer: Any, texts: list[Any], chunk: int = 2048) -> list[int]:
    """Tokens per text with special tokens, uncut (raw strings or word lists)."""
    presplit = bool(texts) and isinstance(texts[0], list)
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        batch = tokenizer(texts[start : start + chunk], truncation=True, max_length=10**9, is_split_into_words=presplit)
        counts.extend(len(ids) for ids in batch["input_ids"])
    return counts


def _key(text: Any) -> str:
    return " ".join(text) if isinstance(text, list) else " ".join(str(text).split())


def _label_key(label: Any) -> str:
    return "|".join(label) if isinstance(label, list) else str(label)


def _overlap(train: Split, other: Split, name: str) -> str | None:
    seen = {_key(t) for t in train.texts}
    shared = [i for i, t in enumerate(other.texts) if _key(t) in seen]
    if not shared:
        return None
    example = other.texts[shared[0]]
    shown = " ".join(example) if isinstance(example, list) else example
    return (
        f"{len(shared)} of {len(other)} {name} texts also occur in the training data (e.g. {other.file}:{other.lines[shared[0]]}: "
        f"{shown[:60]!r}); scores on them measure memory, not generalisation: remove them from one side"
    )


def _conflicts(train: Split) -> str | None:
    labels: dict[str, set[str]] = defaultdict(set)
    for text, label in zip(train.texts, train.labels, strict=True):
        labels[_key(text)].add(_label_key(label))
    clashing = {text: names for text, names in labels.items() if len(names) > 1}
    if not clashing:
        return None
    text, names = next(iter(clashing.items()))
    return (
        f"{len(clashing)} training {'text occurs' if len(clashing) == 1 else 'texts occur'} with different labels"
        f" (e.g. {text[:60]!r}: {sorted(names)}); "
        "fix the labels, or accept them as noise"
    )


def _label_variants(train: Split, names: list[str], counts: Counter[str]) -> str | None:
    """Labels that differ only in case, spaces, underscores or hyphens (``Positive`` / ``positive``, ``card_arrival`` /
    ``card arrival``): most likely one class spelled two ways, which the model would learn as two."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[" ".join(re.sub(r"[_-]+", " ", name.casefold()).split())].append(name)
    variants = [spellings for spellings in groups.values() if len(spellings) > 1]
    if not variants:
        return None
    shown = "; ".join(" / ".join(f"{name!r} ({counts[name]})" for name in spellings) for spellings in variants[:3])
    more = f" and {len(variants) - 3} more" if len(variants) > 3 else ""
    return (
        f"{len(variants)} {'label is' if len(variants) == 1 else 'labels are'} spelled more ways than one, each learned as a class "
        f"of its own: {shown}{more}; fix the labels in {train.file} to one spelling"
    )


def data_warnings(data: TaskData, head_cls: type[Head], *, mistakes_only: bool = False) -> list[str]:
    """The problems in a task's data that are not errors and need no tokenizer (``check`` adds the lengths): what
    reading the files found, texts shared between training and validation/test data, identical texts with different
    labels, rare labels, one label spelled two ways, a small or no validation set. ``mistakes_only`` (what ``train``
    prints before it trains): what reading found, clashing labels, one label spelled two ways and no validation set,
    not the caveats of small data that ``check`` lists (rare labels, a small validation set, shared texts).

    Example:
        >>> data_warnings(data, ClassificationHead)  # doctest: +SKIP
        ["1 label has fewer than 10 training examples: 'refund' (3); expect weak recall on them"]
    """
    warnings = list(data.train.warnings)  # what reading the files found comes first
    validation = data.provenance.get("validation", {})
    train_counts = Counter(name for value in data.train.labels for name in (value if isinstance(value, list) else [value]))
    splits = {"validation": data.validation, **({"test": data.test} if data.test is not None else {})}
    for name, split in splits.items():
        if not (name == "validation" and validation.get("source") == "cut from train"):
            warnings.extend(split.warnings)
            warnings.append("" if mistakes_only else _overlap(data.train, split, name) or "")
    if not head_cls.token_level:
        warnings.append(_conflicts(data.train) or "")
    if not head_cls.token_level and data.labels and not mistakes_only:  # labels of whole texts (not tags, not numbers)
        rare = sorted((n, label) for label, n in train_counts.items() if n < RARE_EXAMPLES)
        if rare:
            listed = ", ".join(f"'{label}' ({n})" for n, label in rare[:5]) + (f" and {len(rare) - 5} more" if len(rare) > 5 else "")
            have = "label has" if len(rare) == 1 else "labels have"
            warnings.append(f"{len(rare)} {have} fewer than {RARE_EXAMPLES} training examples: {listed}; expect weak recall on them")
    if data.labels:
        warnings.append(_label_variants(data.train, data.labels, train_counts) or "")
    least = validation.get("min_validation")
    if not len(data.validation) and len(data.train) and least is not None:  # (no training, nothing to choose: zero-shot)
        warnings.append(
            f"no validation examples (a cut from {len(data.train)} training examples would hold fewer than min_validation="
            f"{least}): training keeps its last weights, with no score to choose an epoch by; add a dev file, or set "
            "`min_validation: 0` to cut one anyway"
        )
    elif len(data.validation) < SMALL_VALIDATION and len(data.train) and not mistakes_only:
        warnings.append(
            f"only {len(data.validation)} validation examples: the best epoch is chosen on noise; add a dev file or raise dev_fraction"
        )
    return [w for w in warnings if w]


def check_data(data: TaskData, head_cls: type[Head], tokenizer: Any, max_length: int, task: str = "") -> DataCheck:
    """Sizes, label balance, text lengths against ``max_length``, and warnings: :func:`data_warnings` and long texts.

    Example:
        >>> report = check_data(data, ClassificationHead, tokenizer, 128, "intent")  # doctest: +SKIP
        >>> report.warnings  # doctest: +SKIP
        ["1 label has fewer than 10 training examples: 'refund' (3); expect weak recall on them"]
    """
    splits = {"train": data.train, "validation": data.validation, **({"test": data.test} if data.test is not None else {})}
    over, longest = {}, 0
    for name, split in splits.items():
        lengths = _token_counts(tokenizer, split.texts)
        over[name] = sum(n > max_length for n in lengths) / max(1, len(lengths))
        longest = max(lengths, default=0) if name == "train" else longest
    counts = Counter(_label_key(v) for v in data.validation.labels) if data.labels else Counter()
    single = all(isinstance(v, str) for v in data.validation.labels)  # one label per text: always guessing one is a baseline
    majority = counts.most_common(1)[0][1] / len(data.validation) if single and counts else None
    source = data.provenance.get("validation", {}).get("source", "file")
    report = DataCheck(task, head_cls.type_name, {k: len(v) for k, v in splits.items()}, source, len(data.labels), majority, over, longest)
    report.warnings = data_warnings(data, head_cls)
    if over["train"] > 0:
        cut, matters = (
            ("each is trained on in pieces of whole words that fit", "the context across a cut")
            if head_cls.token_level
            else ("the rest of each is not read", "the end of a text")
        )
        count = round(over["train"] * len(data.train))
        report.warnings.append(
            f"{count} of {len(data.train)} training texts are longer than max_length={max_length} tokens (longest {longest}); "
            f"{cut}: raise max_length (slower) if {matters} matters"
        )
    return report


__all__ = ["DataCheck", "check_data", "data_warnings"]
