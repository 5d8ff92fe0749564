"""Load, check and split a task's data before any training starts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finechain.data.conll import CONLL_SUFFIXES, read_conll
from finechain.data.inputs import check_one_kind
from finechain.data.readers import JSONL_SUFFIXES, Example, column_fix, read_examples
from finechain.data.split import subsample, validation_size, validation_split
from finechain.data.tagged import TaggedRow, loose_entities_warning, read_tagged_jsonl, tagged_row
from finechain.errors import DataError, InMemory, SpecError
from finechain.heads import Head, HeadOptions, head_type
from finechain.spec import TaskSpec


@dataclass
class Split:
    """Texts with parsed labels and where each came from."""

    texts: list[Any]  # raw strings, or word lists for tagging
    labels: list[Any]
    lines: list[int]
    file: str
    warnings: list[str] = field(default_factory=list)  # found while reading, shown by `finechain check`

    def subset(self, indices: list[int]) -> Split:
        """The rows at ``indices``, in that order."""
        rows = [self.texts[i] for i in indices], [self.labels[i] for i in indices], [self.lines[i] for i in indices]
        return Split(*rows, self.file, self.warnings)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """Everything a task trains and evaluates on, plus how the validation split was made."""

    train: Split
    validation: Split
    test: Split | None
    labels: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """A hash of the training and validation texts and labels: a checkpoint resumes only on the same data.

        Example:
            >>> a = TaskData(Split(["hi"], ["x"], [1], "t"), Split(["yo"], ["x"], [1], "d"), None, ["x"])
            >>> b = TaskData(Split(["hi!"], ["x"], [1], "t"), Split(["yo"], ["x"], [1], "d"), None, ["x"])
            >>> a.digest() == b.digest()
            False
        """
        content = [self.train.texts, self.train.labels, self.validation.texts, self.validation.labels]
        return hashlib.sha256(json.dumps(content, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def _parse(examples: list[Example], head_cls: type[Head], file: Path, options: HeadOptions) -> Split:
    labels = []
    for ex in examples:
        if not ex.text:
            raise DataError("empty text", file=file, line=ex.line, fix="fill in the text or remove the row")
        labels.append(head_cls.parse_label(ex.label, file=str(file), line=ex.line, options=options))
    return Split([ex.text for ex in examples], labels, [ex.line for ex in examples], str(file))


@contextmanager
def trained_columns(spec: TaskSpec) -> Iterator[None]:
    """Read files for a task already trained (``eval``, ``update``): a column the file lacks is named with the fix that
    applies there, the file's columns, since the task reads those it was trained with (there is no spec to change).

    Example:
        >>> try:
        ...     with trained_columns(TaskSpec(name="intent")):
        ...         raise DataError("text column 'text' not found", file="new.csv", line=1, field="text_column")
        ... except DataError as error:
        ...     error.fix
        "task 'intent' reads texts from 'text' and labels from 'label', as in training: name the file's columns so"
    """
    columns = f"texts from '{spec.text_column}' and labels from '{spec.label_column}'"
    with column_fix(f"task '{spec.name}' reads {columns}, as in training: name the file's columns so"):
        yield


def read_split(path: Path, spec: TaskSpec, head_cls: type[Head]) -> Split:
    """Read one labelled file for ``spec`` and parse every label (CoNLL files for token-level heads).

    Example:
        >>> split = read_split(Path("dev.csv"), spec, ClassificationHead)  # doctest: +SKIP
    """
    if head_cls.token_level:
        options: Any = spec.head  # the tagging head's options say how CoNLL files are read
        kind = spec.format if spec.format != "auto" else "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "conll"
        if spec.format == "auto" and path.suffix.lower() == ".csv":
            raise DataError(
                "tagging tasks read CoNLL or JSONL files, not CSV",
                file=path,
                fix='give it a .conll file (a word and its tag per line) or .jsonl ({"text": [words], "label": [tags]})',
            )
        if kind == "jsonl":
            return _tagged_split(read_tagged_jsonl(path, spec.text_column, spec.label_column, options.strict_bio), str(path))
        if kind != "conll":
            raise DataError(f"tagging tasks read CoNLL or JSONL files, not {kind}", file=path, fix="set format: conll or jsonl")
        sentences = read_conll(
            path,
            token_column=options.token_column,
            tag_column=options.tag_column,
            strict=options.strict_bio,
            keep_docstart=options.keep_docstart,
        )
        return Split([s.words for s in sentences], [s.tags for s in sentences], [s.line for s in sentences], str(path))
    if spec.format == "conll":
        raise DataError(f"format 'conll' is for tagging tasks, not {head_cls.type_name}", file=path, fix="use csv, tsv or jsonl")
    if spec.format == "auto" and path.suffix.lower() in CONLL_SUFFIXES:
        raise DataError(
            f"a '{path.suffix}' file holds tagged words, for tagging tasks; this is a {head_cls.type_name} task",
            file=path,
            fix="give it a .csv, .tsv or .jsonl file of texts and labels",
        )
    examples = read_examples(path, fmt=spec.format, text_column=spec.text_column, label_column=spec.label_column)
    return _parse(examples, head_cls, path, spec.head)


def _tagged_split(rows: list[TaggedRow], file: str) -> Split:
    warnings = [w] if (w := loose_entities_warning(rows, file)) else []
    return Split([row.text for row in rows], [row.tags for row in rows], [row.line for row in rows], file, warnings)


def check_known_labels(split: Split, head: Head) -> None:
    """Every label of an evaluation split must be known to the trained head."""
    for parsed, line in zip(split.labels, split.lines, strict=True):
        head.check_known(parsed, file=split.file, line=line)


Labelled = tuple[list[Any], list[Any]]  # (texts, labels) held in memory


def _sequence_text(text: Any, name: InMemory, index: int) -> str:
    if not isinstance(text, str):
        raise DataError(f"text is a {type(text).__name__}, not a string", file=name, line=index, fix="pass one string per example")
    if not text.strip():
        raise DataError("empty text", file=name, line=index, fix="fill in the text or remove the example")
    return text


def split_from_lists(texts: list[Any], labels: list[Any], spec: TaskSpec, head_cls: type[Head], name: str) -> Split:
    """A :class:`Split` from in-memory texts and labels, checked like a file; errors name the item: ``train[4]``.

    Tagging takes word lists with tag lists, or raw strings with ``[start, end, type]`` entity spans; every other
    type takes strings and one label per text.

    Example:
        >>> from finechain.heads import head_type
        >>> split = split_from_lists(["good", "bad"], ["pos", "neg"], TaskSpec(name="s"), head_type("classification"), "train")
        >>> split.labels, split.file
        (['pos', 'neg'], 'train')
    """
    where = InMemory(name)
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels", file=where, fix="pass one label per text")
    if head_cls.token_level:
        strict = spec.head.strict_bio  # type: ignore[attr-defined]
        rows = [tagged_row(text, tags, where, i, strict) for i, (text, tags) in enumerate(zip(texts, labels, strict=True))]
        check_one_kind([row.text for row in rows], range(len(rows)), where)
        return _tagged_split(rows, where)
    parsed = [head_cls.parse_label(label, file=where, line=i, options=spec.head) for i, label in enumerate(labels)]
    return Split([_sequence_text(t, where, i) for i, t in enumerate(texts)], parsed, list(range(len(texts))), where)


def load_task_data(spec: TaskSpec, head_cls: type[Head], seed: int) -> TaskData:
    """Read, validate and split a task's data files; raise :class:`DataError` on the first problem.

    Example:
        >>> data = load_task_data(spec, ClassificationHead, seed=13)  # doctest: +SKIP
        >>> data.provenance["validation"]["source"]  # doctest: +SKIP
        'cut from train'
    """
    if spec.train is None and head_cls.option_labels(spec.head) is not None:  # zero-shot: no examples needed
        return labels_only_task_data(spec, head_cls)
    if spec.train is None:
        raise SpecError(
            f"task '{spec.name}' has no training data",
            field="train",
            fix="set 'train: path/to/file', or pass texts= and labels= to Chain.fit",
        )
    train = read_split(spec.train, spec, head_cls)
    dev = read_split(spec.dev, spec, head_cls) if spec.dev is not None else None
    test = read_split(spec.test, spec, head_cls) if spec.test is not None else None
    return assemble_task_data(spec, head_cls, train, dev, test, seed)


def labels_only_task_data(spec: TaskSpec, head_cls: type[Head]) -> TaskData:
    """The data of a task whose labels its options name (zero-shot) and that has no training file: no training
    examples; the dev and test files, when given, to score it.

    Example:
        >>> spec = TaskSpec(name="topic", type="zero_shot", head={"labels": ["sport", "politics"]})
        >>> data = labels_only_task_data(spec, head_type("zero_shot"))
        >>> len(data.train), len(data.validation), data.labels
        (0, 0, ['sport', 'politics'])
    """
    labels = head_cls.option_labels(spec.head) or []
    dev = read_split(spec.dev, spec, head_cls) if spec.dev is not None else Split([], [], [], "none")
    test = read_split(spec.test, spec, head_cls) if spec.test is not None else None
    validation = {**_source(dev), "rows": len(dev)} if spec.dev is not None else {"source": "none", "rows": 0}
    provenance: dict[str, Any] = {"train_rows": 0, "train_examples": 0, "validation": validation}
    if test is not None:
        provenance["test"] = {**_source(test), "rows": len(test)}
    return TaskData(Split([], [], [], "none"), dev, test, labels, provenance)


def task_data_from_lists(
    spec: TaskSpec, texts: list[Any], labels: list[Any], *, dev: Labelled | None = None, test: Labelled | None = None, seed: int = 13
) -> TaskData:
    """A task's data from in-memory lists, checked and split exactly like files (a validation split is cut from
    the training lists unless ``dev`` is given).

    Example:
        >>> texts, labels = ["good", "fine", "bad", "awful"], ["pos", "pos", "neg", "neg"]
        >>> data = task_data_from_lists(TaskSpec(name="s"), texts, labels, dev=(["ok"], ["pos"]))
        >>> len(data.train), data.labels, data.provenance["validation"]["source"]
        (4, ['neg', 'pos'], 'in memory')
    """
    head_cls = head_type(spec.type)
    train = split_from_lists(texts, labels, spec, head_cls, "train")
    dev_split = split_from_lists(*dev, spec, head_cls, "dev") if dev is not None else None
    test_split = split_from_lists(*test, spec, head_cls, "test") if test is not None else None
    return assemble_task_data(spec, head_cls, train, dev_split, test_split, seed)


def _source(split: Split) -> dict[str, Any]:
    return {"source": "in memory"} if isinstance(split.file, InMemory) else {"source": "file", "file": split.file}


# Below this many examples a validation cut is not made (TaskSpec.min_validation unset): checks scored on fewer cannot
# tell training epochs apart (on 50 examples one answer is 2 points), and on few-shot data (2 examples of SST-2's 16 at
# 8 per class) the first check kept winning its ties; the few-shot benchmark compares both (docs/benchmarks.md).
MIN_VALIDATION = 50


def _min_validation(spec: TaskSpec) -> int:
    return MIN_VALIDATION if spec.min_validation is None else spec.min_validation


def assemble_task_data(spec: TaskSpec, head_cls: type[Head], train: Split, dev: Split | None, test: Split | None, seed: int) -> TaskData:
    """Check the training split, subsample it (``max_train_examples``), cut a validation split unless ``dev`` is
    given, and check that every dev/test label occurs in training.

    Example:
        >>> data = assemble_task_data(spec, ClassificationHead, train, None, None, seed=13)  # doctest: +SKIP
    """
    head_cls.check_training_labels(train.labels, train.lines, train.file)  # the data as given
    labels = head_cls.option_labels(spec.head) or head_cls.label_names(train.labels)
    in_memory = isinstance(train.file, InMemory)
    provenance: dict[str, Any] = {"train": "in memory"} if in_memory else {"train_file": train.file}
    provenance["train_rows"] = len(train)
    keys = head_cls.stratify_keys(train.labels)  # None: a plain random cut
    if spec.max_train_examples and spec.max_train_examples < len(train):
        if keys is not None and spec.max_train_examples < 2 * len(set(keys)):
            raise DataError(
                f"max_train_examples={spec.max_train_examples} cannot keep 2 examples of each of the {len(set(keys))} labels",
                file=train.file,
                fix=f"set max_train_examples to {2 * len(set(keys))} or more",
                field="max_train_examples",
            )
        keep = subsample(keys or [0] * len(train), spec.max_train_examples, seed)
        train = train.subset(keep)
        keys = [keys[i] for i in keep] if keys is not None else None
        provenance["subsample"] = {"examples": len(keep), "seed": seed}
        try:  # the subsample must still train: a rare label may have lost its examples
            head_cls.check_training_labels(train.labels, train.lines, train.file)
        except DataError as error:
            raise DataError(
                f"after subsampling to max_train_examples={spec.max_train_examples}: {error.message}",
                file=error.file,
                line=error.line,
                fix="raise max_train_examples, or remove it to train on every row",
            ) from None
    if dev is not None:
        validation = dev
        provenance["validation"] = {**_source(dev), "rows": len(dev)}
    elif validation_size(len(train), spec.dev_fraction) < (least := _min_validation(spec)):  # selecting on a few is noise
        validation = train.subset([])
        provenance["validation"] = {"source": "none: too few examples to cut", "min_validation": least, "rows": 0}
    else:
        tr_idx, va_idx = validation_split(keys or [0] * len(train), spec.dev_fraction, seed, stratify=keys is not None)
        validation = train.subset(va_idx)
        train = train.subset(tr_idx)
        provenance["validation"] = {"source": "cut from train", "fraction": spec.dev_fraction, "seed": seed, "rows": len(validation)}
    if test is not None:
        provenance["test"] = {**_source(test), "rows": len(test)}
    known = set(labels)
    for split in (validation, test):
        for value, line in zip(split.labels, split.lines, strict=True) if split else ():
            for name in value if isinstance(value, list) else ([value] if labels else []):
                if name not in known:
                    raise DataError(
                        f"label '{name}' does not occur in the training data",
                        file=split.file,
                        line=line,
                        fix="fix the label, or add training examples for it",
                    )
    provenance["train_examples"] = len(train)
    return TaskData(train, validation, test, labels, provenance)
