"""Token tagging (NER): BIO tags on each word's first sub-word, entity-level metrics with seqeval."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from finechain.errors import DataError
from finechain.heads.base import Head, HeadOptions, RawLabel, WordPositions, log_softmax
from finechain.heads.predictions import EntitiesPrediction, Entity
from finechain.heads.registry import register_head

Decoding = Literal["constrained", "argmax"]


class TaggingOptions(HeadOptions):
    """Tagging options: how tags are decoded, and how CoNLL files are read."""

    decoding: Decoding = Field("constrained", description="constrained: Viterbi over valid IOB2 moves; argmax: the best tag per word")
    crf: bool = Field(
        False,
        description="a linear-chain CRF: the head also learns a score for each tag-to-tag move (and for the first and last "
        "tag), trains on the likelihood of whole tag sequences, and decodes by Viterbi over both (within valid IOB2 moves)",
    )
    label_pieces: Literal["first", "all"] = Field(
        "first",
        description="first: a word's tag is trained on its first sub-word, where it is read; all: on every sub-word of it "
        "(those after the first of a B-X word as I-X), more tokens to learn from, still read at the first",
    )
    strict_bio: bool = Field(False, description="an I-X that does not continue X is an error instead of being repaired")
    keep_docstart: bool = Field(False, description="keep -DOCSTART- lines as tokens")
    token_column: int | None = Field(None, description="CoNLL column of the token; default 0, or 1 (FORM) in .conllu files")
    tag_column: int = Field(-1, description="CoNLL column of the tag (-1 = last)")

    @model_validator(mode="after")
    def _crf_decodes_sequences(self) -> TaggingOptions:
        if self.crf and self.decoding == "argmax":
            raise ValueError("a CRF decodes whole tag sequences: remove `decoding: argmax`, or set `crf: false`")
        if self.crf and self.label_pieces == "all":
            raise ValueError("a CRF learns moves from word to word: remove `label_pieces: all`, or set `crf: false`")
        return self


IGNORE = -100


def allowed_transitions(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(start, transition)`` masks of valid IOB2 moves: ``I-X`` only after ``B-X`` or ``I-X``.

    Example:
        >>> start, trans = allowed_transitions(["B-PER", "I-PER", "O"])
        >>> start.tolist(), trans[2].tolist()
        ([True, False, True], [True, False, True])
    """
    start = np.array([not tag.startswith("I-") for tag in labels])
    trans = np.array([[not b.startswith("I-") or (a[2:] == b[2:] and a != "O") for b in labels] for a in labels])
    return start, trans


@dataclass(frozen=True)
class TransitionScores:
    """A CRF's learned scores (natural-log units, added to the words' log-probabilities): ``start[tag]`` for a text's
    first tag, ``moves[previous, next]`` for each step, ``end[tag]`` for its last tag.

    Example:
        >>> TransitionScores.zeros(2).moves.tolist()
        [[0.0, 0.0], [0.0, 0.0]]
    """

    start: np.ndarray
    moves: np.ndarray
    end: np.ndarray

    @classmethod
    def zeros(cls, labels: int) -> TransitionScores:
        """No preference for any move: decoding is then the plain constrained Viterbi."""
        return cls(np.zeros(labels), np.zeros((labels, labels)), np.zeros(labels))

    def to_json(self) -> dict[str, list]:
        """Plain lists, for the head's saved state."""
        return {"start": self.start.tolist(), "moves": self.moves.tolist(), "end": self.end.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TransitionScores:
        """From ``start``, ``moves`` and ``end`` lists or arrays (the inverse of :meth:`to_json`)."""
        return cls(*(np.asarray(data[key], dtype=np.float64) for key in ("start", "moves", "end")))


def viterbi(
    log_probs: np.ndarray, lengths: np.ndarray, start: np.ndarray, trans: np.ndarray, scores: TransitionScores | None = None
) -> np.ndarray:
    """Best tag paths under the IOB2 constraints for padded ``[texts, words, labels]`` log-probabilities, all texts
    at once, plus a CRF's move ``scores`` if given: ``[texts, words]`` tag ids (columns past a text's length are filler).

    Example:
        >>> lp = np.log(np.array([[[0.1, 0.6, 0.3], [0.2, 0.7, 0.1]]]))  # B-PER, I-PER, O
        >>> viterbi(lp, np.array([2]), *allowed_transitions(["B-PER", "I-PER", "O"])).tolist()
        [[0, 1]]
    """
    texts, width, n_labels = log_probs.shape
    scores = scores or TransitionScores.zeros(n_labels)
    moves = np.where(trans, scores.moves, -np.inf)
    score = np.where(start, log_probs[:, 0] + scores.start, -np.inf)
    stay = np.broadcast_to(np.arange(n_labels), (texts, n_labels))
    back = np.empty((width, texts, n_labels), dtype=np.intp)
    for t in range(1, width):
        total = score[:, :, None] + moves  # [texts, previous tag, next tag]
        pointers = total.argmax(1)
        active = (t < lengths)[:, None]  # past its end a text keeps its score and points at itself
        score = np.where(active, total.max(1) + log_probs[:, t], score)
        back[t] = np.where(active, pointers, stay)
    paths = np.empty((texts, width), dtype=np.intp)
    current = (score + scores.end).argmax(-1)
    for t in range(width - 1, 0, -1):
        paths[:, t] = current
        current = back[t, np.arange(texts), current]
    paths[:, 0] = current
    return paths


def best_paths(
    log_probs: np.ndarray, lengths: np.ndarray, start: np.ndarray, trans: np.ndarray, scores: TransitionScores | None = None
) -> np.ndarray:
    """The best IOB2-valid tag path of every text, for ``[words, labels]`` log-probabilities of all texts one after
    another (``lengths`` words each), plus a CRF's move ``scores`` if given. Without them the free per-word choice is
    kept where it is valid (nothing scores higher); the other texts (with scores: all) go through Viterbi, in padded
    batches of up to 256 texts of similar length. Returns the tag ids, flat like the input.

    Example:
        >>> lp = np.log(np.array([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]]))  # B-PER, I-PER, O
        >>> best_paths(lp, np.array([2, 1]), *allowed_transitions(["B-PER", "I-PER", "O"])).tolist()
        [0, 1, 0]
    """
    path = log_probs.argmax(-1)
    ends = np.cumsum(lengths)
    if scores is None:
        firsts = (ends - lengths)[lengths > 0]
        owner = np.repeat(np.arange(lengths.size), lengths)
        invalid = ~trans[path[:-1], path[1:]]
        invalid[firsts[1:] - 1] = False  # the step from one text's last word to the next text's first
        redo = np.union1d(owner[firsts][~start[path[firsts]]], owner[1:][invalid])
    else:
        redo = np.flatnonzero(lengths > 0)
    order = redo[np.argsort(lengths[redo], kind="stable")]  # similar lengths together: little padding
    for begin in range(0, order.size, 256):
        group = order[begin : begin + 256]
        padded = np.zeros((group.size, lengths[group].max(), log_probs.shape[-1]), dtype=log_probs.dtype)
        for j, text in enumerate(group):
            padded[j, : lengths[text]] = log_probs[ends[text] - lengths[text] : ends[text]]
        for text, found in zip(group, viterbi(padded, lengths[group], start, trans, scores), strict=True):
            path[ends[text] - lengths[text] : ends[text]] = found[: lengths[text]]
    return path


def spans_from_tags(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first_word, last_word)`` for each entity in an IOB2 (or repaired) tag sequence.

    Example:
        >>> spans_from_tags(["B-PER", "I-PER", "O", "I-LOC"])
        [('PER', 0, 1), ('LOC', 3, 3)]
    """
    spans: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        kind = tag[2:]
        if tag.startswith("I-") and spans and spans[-1][0] == kind and spans[-1][2] == i - 1:
            spans[-1] = (kind, spans[-1][1], i)
        else:
            spans.append((kind, i, i))
    return spans


def entity_types(tags: Sequence[str]) -> list[str]:
    """The entity types of IOB2 tags, in first-seen order.

    Example:
        >>> entity_types(["O", "B-PER", "I-PER", "B-LOC"])
        ['PER', 'LOC']
    """
    return list(dict.fromkeys(tag[2:] for tag in tags if tag[:2] in ("B-", "I-")))


@register_head
class TaggingHead(Head):
    """One BIO tag per word, predicted from the word's first sub-word; entities as character spans.

    Example:
        >>> from types import SimpleNamespace
        >>> head = TaggingHead(["B-PER", "I-PER", "O"])
        >>> words = SimpleNamespace(word_starts=[[1, 2]], word_spans=[[(0, 6), (7, 13)]])
        >>> out = np.array([[0., 0, 9], [9, 0, 0], [0, 9, 0], [0, 0, 9]])
        >>> head.decode([out], ["Angela Merkel"], words)[0].entities[0].text
        'Angela Merkel'
    """

    type_name = "tagging"
    Options = TaggingOptions
    default_metric = "entity_f1"
    metrics = ("entity_f1", "entity_precision", "entity_recall", "macro_f1", "word_accuracy")
    loss = "token_cross_entropy"
    token_level = True
    frozen_layers_alone = 0  # one tagging task tunes every layer: +0.9 to +4.0 entity F1 on 1,000 sentences (benchmarks.md)
    # ... at twice the branch rate and three times the head's: +1.2 / +2.0 entity F1 more (CoNLL-2003 / SNIPS slots, held-out
    # training sentences, 3 seeds; `python -m benchmarks tagging-defaults --evaluate-on holdout`)
    training_alone: ClassVar[dict[str, float]] = {"learning_rate": 2e-4, "head_learning_rate": 3e-3}

    def __init__(self, labels: Sequence[str] = (), options: Any = None) -> None:
        super().__init__(labels, options)
        self._start, self._trans = allowed_transitions(self.labels)
        self._scores: TransitionScores | None = None  # a CRF's learned move scores, once trained

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """The tag set of the training data."""
        super().initialize(parsed, labels)
        self._start, self._trans = allowed_transitions(self.labels)
        self._scores = None

    @property
    def loss_name(self) -> str:
        """``crf`` (sequence likelihood) with the ``crf`` option, else the per-word cross-entropy."""
        return "crf" if self.options.crf else self.loss  # type: ignore[attr-defined]

    @property
    def learns_transitions(self) -> bool:
        """With the ``crf`` option."""
        return bool(self.options.crf)  # type: ignore[attr-defined]

    def take_layer_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Keep the CRF's move scores (``start``, ``moves``, ``end``) for decoding."""
        if self.learns_transitions:
            self._scores = TransitionScores.from_json(tensors)

    def state(self) -> dict[str, Any]:
        """A CRF's learned move scores (so that a chain exported without PyTorch decodes as the original does)."""
        return {"transitions": self._scores.to_json()} if self._scores is not None else {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""
        self._scores = TransitionScores.from_json(state["transitions"]) if "transitions" in state else None

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: Any) -> list[str]:
        """Tag lists come checked from the CoNLL and JSONL readers."""
        if not isinstance(raw, list):
            raise DataError("tagging labels must be a tag per word", file=file, line=line, fix="use a CoNLL file (token TAG per line)")
        return [str(tag) for tag in raw]

    @classmethod
    def label_names(cls, parsed: Sequence[Any]) -> list[str]:
        """All tags seen, plus ``O``, plus ``I-X`` for every ``B-X`` (so every entity can continue)."""
        tags = {"O"} | {tag for row in parsed for tag in row}
        tags |= {"I-" + tag[2:] for tag in tags if tag.startswith("B-")}
        return sorted(tags)

    @classmethod
    def check_training_labels(cls, parsed: Sequence[Any], lines: Sequence[int], file: str) -> None:
        """At least two sentences."""
        if len(parsed) < 2:
            raise DataError(f"{len(parsed)} training sentences", file=file, fix="add at least 2 sentences")

    def span_types(self) -> list[str]:
        """The entity types of its tags (``B-PER`` -> ``PER``), in first-seen order."""
        return entity_types(self.labels)

    @classmethod
    def allow_names(cls, parsed: Any) -> list[str]:
        """The span types one sentence's tags mark: what a flow stage's ``allow`` lists for a tagger.

        Example:
            >>> TaggingHead.allow_names(["B-artist", "I-artist", "O", "B-playlist"])
            ['artist', 'playlist']
        """
        return sorted(entity_types(parsed))

    def allows(self, label: str, allowed: Collection[str]) -> bool:
        """``O`` always; a tag when the span type it marks is ``allowed``."""
        return label == "O" or label[2:] in allowed

    def empty_agrees(self, gold: Any) -> bool:
        """No entities were to be found: every gold tag is ``O``."""
        return all(tag == "O" for tag in gold)

    def targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """Tag ids at each word's first sub-word, ``-100`` elsewhere: ``[texts, max tokens]``."""
        if words is None:
            raise ValueError("tagging targets need the word positions")
        index = {tag: i for i, tag in enumerate(self.labels)}
        width = max([1, *words.lengths, *(p + 1 for starts in words.word_starts for p in starts if p is not None)])
        out = np.full((len(parsed), width), IGNORE, dtype=np.int64)
        for row, (tags, starts) in enumerate(zip(parsed, words.word_starts, strict=True)):
            for tag, position in zip(tags, starts, strict=True):
                if position is not None:
                    out[row, position] = index[tag]
        return out

    def training_targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """:meth:`targets`, and with ``label_pieces: all`` also each word's later sub-words (up to the next word's first,
        or the text's closing token): ``I-X`` after a ``B-X``, the word's own tag otherwise.

        Example:
            >>> from types import SimpleNamespace
            >>> head = TaggingHead(["B-PER", "I-PER", "O"], {"label_pieces": "all"})
            >>> words = SimpleNamespace(word_starts=[[1, 3]], lengths=[6])  # [CLS] An ##ge Merkel ##s [SEP]
            >>> head.training_targets([["B-PER", "I-PER"]], words).tolist()
            [[-100, 0, 1, 1, 1, -100]]
        """
        out = self.targets(parsed, words)
        if self.options.label_pieces == "first" or words is None:  # type: ignore[attr-defined]
            return out
        index = {tag: i for i, tag in enumerate(self.labels)}
        later = [index.get("I-" + tag[2:], i) if tag.startswith("B-") else i for i, tag in enumerate(self.labels)]
        for row, (starts, length) in enumerate(zip(words.word_starts, words.lengths, strict=True)):
            kept = [p for p in starts if p is not None]
            for position, end in zip(kept, [*kept[1:], length - 1], strict=True):
                out[row, position + 1 : end] = later[out[row, position]]
        return out

    def word_tags(self, outputs: Sequence[np.ndarray], positions: list[list[int]]) -> tuple[list[list[str]], list[list[float]]]:
        """Per text, tags and their probabilities for the words whose first sub-words are at ``positions``; all texts are
        decoded together."""
        lengths = [len(p) for p in positions]
        if not sum(lengths):
            return [[] for _ in positions], [[] for _ in positions]
        rows = [np.asarray(o, dtype=np.float32)[p] for o, p in zip(outputs, positions, strict=True)]
        log_probs = log_softmax(np.concatenate(rows), axis=-1)
        if self.options.crf:  # type: ignore[attr-defined]
            scores = self._scores or TransitionScores.zeros(len(self.labels))
            path = best_paths(log_probs, np.array(lengths, dtype=np.intp), self._start, self._trans, scores)
        elif self.options.decoding == "constrained":  # type: ignore[attr-defined]
            path = best_paths(log_probs, np.array(lengths, dtype=np.intp), self._start, self._trans)
        else:
            path = log_probs.argmax(-1)
        probs = np.exp(log_probs[np.arange(len(path)), path]).tolist()
        tags = [self.labels[i] for i in path.tolist()]
        ends = np.cumsum(lengths).tolist()
        return [tags[e - n : e] for n, e in zip(lengths, ends, strict=True)], [probs[e - n : e] for n, e in zip(lengths, ends, strict=True)]

    def decode(self, outputs: Sequence[np.ndarray], texts: Sequence[Any], words: WordPositions | None = None) -> list[EntitiesPrediction]:
        """Per text: word tags and entities (type, text, character offsets or word indices, score)."""
        if words is None:
            raise ValueError("tagging predictions need the word positions")
        all_tags, all_probs = self.word_tags(outputs, [[p for p in starts if p is not None] for starts in words.word_starts])
        results = []
        for row, starts in enumerate(words.word_starts):
            kept_tags, kept_probs = iter(all_tags[row]), iter(all_probs[row])
            # a word with no token of its own (cut off by max_length, or nothing the tokenizer keeps) is "O"
            tags = [next(kept_tags) if p is not None else "O" for p in starts]
            probs = [next(kept_probs) if p is not None else 1.0 for p in starts]
            entities = []
            for kind, first, last in spans_from_tags(tags):
                score = round(sum(probs[first : last + 1]) / (last - first + 1), 6)
                if words.word_spans is not None:
                    begin, end = words.word_spans[row][first][0], words.word_spans[row][last][1]
                    entities.append(Entity(kind, score, texts[row][begin:end], start=begin, end=end))
                else:
                    entities.append(Entity(kind, score, " ".join(texts[row][first : last + 1]), first_word=first, last_word=last))
            results.append(EntitiesPrediction(entities, tags))
        return results

    def _paths(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
        positions = [np.flatnonzero(row != IGNORE).tolist() for row in targets]
        gold = [[self.labels[i] for i in row[p].tolist()] for row, p in zip(targets, positions, strict=True)]
        return gold, self.word_tags(outputs, positions)[0]

    def score(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        """Entity precision/recall/F1 (micro, seqeval) with a per-type report, and word accuracy."""
        from seqeval.metrics import classification_report

        gold, pred = self._paths(outputs, targets)
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        per_type = {
            kind: {
                "precision": float(m["precision"]),
                "recall": float(m["recall"]),
                "f1": float(m["f1-score"]),
                "support": int(m["support"]),
            }
            for kind, m in report.items()
            if "avg" not in kind
        }
        flat_gold = [t for row in gold for t in row]
        flat_pred = [t for row in pred for t in row]
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})  # seqeval's f1_score etc.
        return {
            "entity_f1": float(micro["f1-score"]),
            "entity_precision": float(micro["precision"]),
            "entity_recall": float(micro["recall"]),
            "macro_f1": float(np.mean([m["f1"] for m in per_type.values()])) if per_type else 0.0,
            "word_accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred, strict=True)])) if flat_gold else 0.0,
            "per_type": per_type,
            "n": len(gold),
        }
