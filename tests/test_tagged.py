"""Tagging data from JSONL: word lists with tags, or raw text with character-span entities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.decoding import detokenize, running_text_example
from finechain import Chain
from finechain.data.conll import read_conll
from finechain.data.prepare import split_from_lists
from finechain.data.tagged import read_tagged_jsonl, tags_from_spans
from finechain.data.words import split_words
from finechain.errors import DataError
from finechain.heads import head_type
from finechain.heads.tagging import spans_from_tags
from finechain.spec import TaskSpec, TrainingConfig

from .conftest import ner_sentences

FAST = TrainingConfig(epochs=10, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0)
DEMO_NER = Path(__file__).resolve().parents[1] / "src" / "finechain" / "demo" / "data" / "ner_train.conll"


def test_spans_tag_the_words_they_overlap() -> None:
    text = "Paris-based Anne-Marie met Paris-London staff."
    #       0         1         2         3         4
    entities = [[0, 5, "LOC"], {"start": 12, "end": 22, "label": "PER"}, [27, 32, "LOC"], [33, 39, "LOC"]]
    assert [text[a:b] for a, b in split_words(text)] == ["Paris-based", "Anne-Marie", "met", "Paris-London", "staff", "."]
    # a part of a word tags the whole word; a word two entities touch belongs to the first
    assert tags_from_spans(text, entities) == ["B-LOC", "B-PER", "O", "B-LOC", "O", "O"]
    assert tags_from_spans("New York  Times", [[0, 8, "LOC"], [10, 15, "ORG"]]) == ["B-LOC", "I-LOC", "B-ORG"]
    assert tags_from_spans("nothing here", []) == ["O", "O"]


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([[0, 5, "PER"], [3, 8, "LOC"]], "entities overlap at character 3"),
        ([[5, 6, "PER"]], "entity [5, 6] covers no word"),
        ([[0, 40, "PER"]], "entity span [0, 40] is not inside the text (11 characters)"),
        ([[3, 3, "PER"]], "entity span [3, 3] is not inside"),
        ([[True, 3, "PER"]], "is not inside"),
        ([[0, 5]], "entity [0, 5] is not [start, end, type]"),
        ([[0, 5, "O"]], 'entity type "O" is not a name'),
        ({"PER": [0, 5]}, "entities are a dict, not a list"),
    ],
)
def test_bad_spans_are_one_line_errors(entities: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        tags_from_spans("Peter Smith", entities, "ner.jsonl", 7)
    text = str(info.value)
    assert text.startswith("ner.jsonl:7: ") and message in text and "\n" not in text


def test_spans_agree_with_the_corpus_words(tmp_path: Path) -> None:
    """CoNLL sentences as running text with their entities as character spans give the corpus tags back, for every
    sentence whose running text splits into the corpus words."""
    same = 0
    for sentence in read_conll(DEMO_NER):
        text, entities = running_text_example(sentence)
        if [text[a:b] for a, b in split_words(text)] != sentence.words:
            continue
        assert tags_from_spans(text, entities) == sentence.tags
        same += 1
    assert same > 0.9 * len(read_conll(DEMO_NER))


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_rows_and_their_errors(tmp_path: Path) -> None:
    words = _write_jsonl(tmp_path / "w.jsonl", [{"tokens": ["Peter", "left"], "ner_tags": ["I-PER", "O"]}])
    assert [r.tags for r in read_tagged_jsonl(words, "tokens", "ner_tags")] == [["B-PER", "O"]]  # IOB1 repaired
    cases = [
        (
            [{"text": "Peter left", "label": [[0, 5, "PER"]]}, {"text": ["Anna"], "label": ["B-PER"]}],
            2,
            "strings and word lists are mixed: the first text is a string, this one a word list",
        ),
        ([{"text": ["Peter", "left"], "label": [1, 0]}], 1, "tags must be names like B-PER, not numbers"),
        ([{"text": ["Peter", "left"], "label": ["B-PER"]}], 1, "2 words but 1 tags"),
        ([{"text": "Peter left", "label": ["B-PER", "O"]}], 1, "a tagging text given as a string takes entity spans, not tags"),
        ([{"text": "   ", "label": []}], 1, "empty text"),
        ([{"text": "Peter"}, {"text": "x", "label": []}], 1, "expected an object with 'text' and 'label', found ['text']"),
    ]
    for rows, line, message in cases:
        with pytest.raises(DataError) as info:
            read_tagged_jsonl(_write_jsonl(tmp_path / "bad.jsonl", rows))
        assert str(info.value).startswith(f"{tmp_path / 'bad.jsonl'}:{line}: ") and message in str(info.value)
    with pytest.raises(DataError, match="strict IOB2"):
        read_tagged_jsonl(words, "tokens", "ner_tags", strict=True)


def test_in_memory_tagging_data_is_one_kind_of_text() -> None:
    """Like a file: raw strings with spans, or word lists with tags, and the error names the first odd item."""
    texts, labels = ["Peter left", "Anna stayed", ["Bob", "came"]], [[[0, 5, "PER"]], [[0, 4, "PER"]], ["B-PER", "O"]]
    with pytest.raises(DataError, match=r"^train\[2\]: strings and word lists are mixed: the first text is a string"):
        split_from_lists(texts, labels, TaskSpec(name="ner", type="tagging"), head_type("tagging"), "train")
    assert split_from_lists(texts[:2], labels[:2], TaskSpec(name="ner", type="tagging"), head_type("tagging"), "train").labels[1] == [
        "B-PER",
        "O",
    ]


def _span_rows(n: int, seed: int) -> list[dict[str, object]]:
    """The toy NER sentences as running text (the city and the full stop glued: 'paris.') with entity spans."""
    rows = []
    for sentence in ner_sentences(n, seed):
        text, spans = detokenize([w for w, _ in sentence] + ["."])
        tags = [t for _, t in sentence] + ["O"]
        rows.append({"text": text, "entities": [[spans[a][0], spans[b][1], kind] for kind, a, b in spans_from_tags(tags)]})
    return rows


def test_a_tagger_trains_and_scores_on_raw_text_with_spans(tiny_backbone: Path, tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", _span_rows(160, 1))
    test = _write_jsonl(tmp_path / "test.jsonl", _span_rows(60, 2))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="ner", type="tagging", train=train, test=test, label_column="entities")
    result = chain.fit(spec, FAST, progress=False)
    assert result.test is not None and result.test["entity_f1"] > 0.9 and result.test["per_type"]["LOC"]["support"] == 60
    text = "the bob visited new york music."
    found = chain.predict([text])[0]["ner"].entities
    assert [(e.text, e.type, e.start) for e in found] == [("bob", "PER", 4), ("new york", "LOC", 16)]
    # the Python API takes the same two kinds of examples as the files
    texts = [row["text"] for row in _span_rows(30, 3)]
    scores = chain.score("ner", texts, [row["entities"] for row in _span_rows(30, 3)])
    assert scores["entity_f1"] > 0.9
    # or one tag per word of the raw string as predict cuts it; a tag count that does not fit is an error
    assert chain.score("ner", ["bob visited paris."], [["B-PER", "O", "B-LOC", "O"]])["n"] == 1
    with pytest.raises(DataError, match=r"^labels\[0\]: 4 words but 3 tags"):
        chain.score("ner", ["bob visited paris."], [["B-PER", "O", "B-LOC"]])
    with pytest.raises(DataError, match=r"^labels\[0\]: label 'B-ORG' does not occur in the training data"):
        chain.score("ner", ["bob visited paris."], [[[0, 3, "ORG"]]])
