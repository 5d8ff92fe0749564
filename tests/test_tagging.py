"""Token tagging: CoNLL reading and its errors, first-subword training, spans, constrained decoding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.cli.app import main
from finechain.data.conll import read_conll, read_word_lists
from finechain.data.tokens import overflow_windows
from finechain.errors import DataError
from finechain.heads.tagging import TransitionScores, allowed_transitions, best_paths, spans_from_tags
from tests.conftest import NAMES, ner_sentences, sentiment_rows, write_conll, write_csv

FAST = TrainingConfig(epochs=10, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0)


def test_conll_reader_repairs_iob1_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n")
    (sentence,) = read_conll(path)
    assert sentence.words == ["EU", "rejects", "German"] and sentence.tags == ["B-ORG", "O", "B-MISC"] and sentence.line == 3


def test_tab_separated_and_conllu_files(tmp_path: Path) -> None:
    tabbed = tmp_path / "a.tsv.conll"
    tabbed.write_text("New York\tNNP\tB-LOC\nis\tVBZ\tO\t\n\t\nbig\t\tO\n")  # a token with a space; an empty column
    assert [(s.words, s.tags) for s in read_conll(tabbed)] == [(["New York", "is"], ["B-LOC", "O"]), (["big"], ["O"])]
    assert [(s.words, s.tags) for s in read_conll(tabbed, tag_column=2)] == [(["New York", "is"], ["B-LOC", "O"]), (["big"], ["O"])]
    # CoNLL-U with an 11th column of NER tags: comments, a multi-word token's range and an empty node are skipped
    rows = [
        "# sent_id = 1",
        "# text = Don't go to New York.",
        "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\t_",
        "1\tDo\tdo\tAUX\t_\t_\t3\taux\t_\t_\tO",
        "2\tn't\tnot\tPART\t_\t_\t3\tadvmod\t_\t_\tO",
        "3\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\tO",
        "3.1\tgo\tgo\tVERB\t_\t_\t_\t_\t0:root\t_\tO",
        "4\tNew York\tNew York\tPROPN\t_\t_\t3\tobl\t_\tSpaceAfter=No\tB-LOC",
        "5\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\tO",
        "",
    ]
    conllu = tmp_path / "a.conllu"
    conllu.write_text("\n".join(rows) + "\n")
    (sentence,) = read_conll(conllu)
    assert sentence.words == ["Do", "n't", "go", "New York", "."] and sentence.tags == ["O", "O", "O", "B-LOC", "O"] and sentence.line == 4
    assert read_word_lists(conllu) == [sentence.words]
    with pytest.raises(DataError, match=r"a.conllu:4: tag 'do' is not in BIO form"):
        read_conll(conllu, tag_column=2)


@pytest.mark.parametrize("scheme", ["BIOES", "BILOU"])
def test_bioes_and_bilou_files_read_as_bio(tmp_path: Path, scheme: str) -> None:
    single, last = ("S-", "E-") if scheme == "BIOES" else ("U-", "L-")
    rows = [("Angela", "B-PER"), ("Merkel", last + "PER"), ("met", "O"), ("Macron", single + "PER"), ("in", "O")]
    rows += [("New", "B-LOC"), ("York", "I-LOC"), ("City", last + "LOC")]
    path = tmp_path / "a.bioes"
    path.write_text("".join(f"{w} {t}\n" for w, t in rows))
    (sentence,) = read_conll(path, strict=True)
    assert sentence.tags == ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]


@pytest.mark.parametrize(
    ("content", "strict", "line", "message"),
    [
        ("EU B-ORG\nrejects\n", False, 2, "expected at least 2 columns"),
        ("EU ORG\n", False, 1, "tag 'ORG' is not in BIO form"),
        ("EU O\nUnion I-ORG\n", True, 2, "'I-ORG' follows 'O' (strict IOB2)"),
        ("EU O\nUnion E-ORG\n", True, 2, "'E-ORG' follows 'O' (strict IOB2)"),
        ("EU B-PER\nUnion I-ORG\n", True, 2, "'I-ORG' follows 'B-PER'"),
        ("\n\n", False, None, "file is empty"),
        ("EU\tB-ORG\n\tO\n", False, 2, "empty token"),
    ],
)
def test_bad_conll_is_one_line_with_file_and_line(tmp_path: Path, content: str, strict: bool, line: int | None, message: str) -> None:
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_conll(path, strict=strict)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"{path}:{line}:" if line else f"{path}:")


def test_viterbi_never_emits_invalid_bio() -> None:
    labels = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    start, trans = allowed_transitions(labels)
    rng = np.random.default_rng(0)
    texts = [np.log(rng.dirichlet(np.ones(5), size=6)) for _ in range(200)]
    lengths = np.full(len(texts), 6)
    paths = best_paths(np.concatenate(texts), lengths, start, trans)
    for ids in np.split(paths, np.cumsum(lengths)[:-1]):
        path = [labels[i] for i in ids]
        previous = "O"
        for tag in path:
            assert not tag.startswith("I-") or (previous[2:] == tag[2:] and previous != "O")
            previous = tag
    assert spans_from_tags(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]


def test_viterbi_finds_the_best_valid_path() -> None:
    """Against every path, for texts of 0-4 words decoded together: valid free choices (the shortcut) and invalid ones
    (padded batch Viterbi) alike, in one call, so texts of different lengths share the padded batch."""
    import itertools

    labels = ["B-LOC", "I-LOC", "O"]
    start, trans = allowed_transitions(labels)
    rng = np.random.default_rng(1)
    texts = [np.log(rng.dirichlet(np.full(3, 0.5), size=int(rng.integers(0, 5)))) for _ in range(400)]
    lengths = np.array([len(t) for t in texts])
    found = np.split(best_paths(np.concatenate(texts), lengths, start, trans), np.cumsum(lengths)[:-1])
    shortcuts = 0

    def is_valid(p: tuple[int, ...]) -> bool:
        return not p or (start[p[0]] and all(trans[a, b] for a, b in itertools.pairwise(p)))

    for log_probs, path in zip(texts, found, strict=True):
        valid = [p for p in itertools.product(range(3), repeat=len(log_probs)) if is_valid(p)]
        best = max(valid, key=lambda p: sum(log_probs[w, t] for w, t in enumerate(p)))
        assert path.tolist() == list(best)
        shortcuts += tuple(log_probs.argmax(-1)) in valid
    assert 0 < shortcuts < len(texts) - 50  # both ways through the function were taken, often


def test_viterbi_with_crf_scores_finds_the_best_valid_path() -> None:
    """With a CRF's move scores every text goes through Viterbi: its path is the best valid one by word scores plus
    start, move and end scores, against every path."""
    import itertools

    labels = ["B-LOC", "I-LOC", "O"]
    start, trans = allowed_transitions(labels)
    rng = np.random.default_rng(2)
    scores = TransitionScores(rng.normal(size=3), rng.normal(size=(3, 3)) * 2, rng.normal(size=3))
    texts = [np.log(rng.dirichlet(np.full(3, 0.5), size=int(rng.integers(0, 5)))) for _ in range(200)]
    lengths = np.array([len(t) for t in texts])
    found = np.split(best_paths(np.concatenate(texts), lengths, start, trans, scores), np.cumsum(lengths)[:-1])

    def total(log_probs: np.ndarray, p: tuple[int, ...]) -> float:
        moves = sum(scores.moves[a, b] for a, b in itertools.pairwise(p))
        return sum(log_probs[w, t] for w, t in enumerate(p)) + scores.start[p[0]] + moves + scores.end[p[-1]]

    differs = 0
    for log_probs, path in zip(texts, found, strict=True):
        if not len(log_probs):
            continue
        every = itertools.product(range(3), repeat=len(log_probs))
        valid = [p for p in every if start[p[0]] and all(trans[a, b] for a, b in itertools.pairwise(p))]
        assert path.tolist() == list(max(valid, key=lambda p: total(log_probs, p)))
        differs += path.tolist() != best_paths(log_probs, np.array([len(log_probs)]), start, trans).tolist()
    assert differs > 20  # the move scores changed many answers


def test_crf_loss_is_the_sequence_likelihood() -> None:
    """Against every tag sequence: minus the gold sequence's log-probability, per word, over texts whose words start
    at different tokens (targets -100 elsewhere); gradients reach the move scores."""
    import itertools

    import torch

    from finechain.model.losses import crf_negative_log_likelihood

    torch.manual_seed(0)
    logits, targets = torch.randn(3, 6, 3), torch.tensor([[-100, 1, -100, 2, 0, -100], [0, 2, -100, -100, -100, -100], [-100] * 6])
    start, moves, end = (torch.randn(*shape, requires_grad=True) for shape in ((3,), (3, 3), (3,)))

    def score(emitted: torch.Tensor, tags: list[int]) -> torch.Tensor:
        steps = sum(moves[a, b] + emitted[t + 1, b] for t, (a, b) in enumerate(itertools.pairwise(tags)))
        return start[tags[0]] + emitted[0, tags[0]] + steps + end[tags[-1]]

    expected, words = torch.zeros(()), 0
    for row in range(2):  # the third text has no words: it adds nothing
        positions = [i for i in range(6) if targets[row, i] != -100]
        emitted, gold = logits[row, positions], [int(targets[row, i]) for i in positions]
        every = torch.stack([score(emitted, list(p)) for p in itertools.product(range(3), repeat=len(positions))])
        expected = expected + torch.logsumexp(every, 0) - score(emitted, gold)
        words += len(positions)
    loss = crf_negative_log_likelihood(logits, targets, start, moves, end)
    assert abs(loss.item() - (expected / words).item()) < 1e-5
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in (start, moves, end))


def test_a_crf_tagger_learns_moves_and_keeps_them_everywhere(tiny_backbone: Path, tmp_path: Path) -> None:
    """``crf: true``: trained on sequence likelihood, its move scores learned (an O -> I-X move is disliked), in the
    saved head config, and the same answers from the reloaded chain and the ONNX export (NumPy decoding only)."""
    from finechain.export.onnx import export_onnx
    from finechain.inference import Engine
    from finechain.inference.exported import ExportedChain

    train = write_conll(tmp_path / "train.conll", ner_sentences(200, 1))
    dev = write_conll(tmp_path / "dev.conll", ner_sentences(50, 2))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="ner", type="tagging", train=train, dev=dev, head={"crf": True})
    result = chain.fit(spec, FAST, progress=False)
    assert result.validation["entity_f1"] > 0.9
    head = chain.model.tasks["ner"].head
    moves = np.array(head.config()["state"]["transitions"]["moves"])
    o, i_loc, b_loc = (head.labels.index(tag) for tag in ("O", "I-LOC", "B-LOC"))
    assert moves[b_loc, i_loc] > moves[o, i_loc] + 0.1  # learned: I-LOC follows B-LOC, not O
    texts = ["alice visited new york", "bob met alice in paris"]
    answers = chain.predict(texts)
    assert [(e.type, e.text) for e in answers[0]["ner"].entities] == [("PER", "alice"), ("LOC", "new york")]
    reloaded = Chain.from_pretrained(chain.save_pretrained(tmp_path / "chain"))
    assert reloaded.model.tasks["ner"].head.config() == head.config()
    assert reloaded.predict(texts) == answers
    export_onnx(reloaded, tmp_path / "onnx")
    assert [p["ner"].tags for p in Engine(ExportedChain(tmp_path / "onnx")).predict(texts)] == [p["ner"].tags for p in answers]


def test_a_tagger_trained_on_every_sub_word_still_reads_and_scores_whole_words(tiny_backbone: Path, tmp_path: Path) -> None:
    """``label_pieces: all``: the later sub-words of a word are trained on too (as ``I-X`` after a ``B-X``), while scores
    and predictions stay one per word, read at its first sub-word; with a CRF (moves between words) it is an error."""
    from finechain.heads.tagging import TaggingHead

    sentences = ner_sentences(200, 1)
    train = write_conll(tmp_path / "train.conll", sentences)
    dev = write_conll(tmp_path / "dev.conll", ner_sentences(50, 2))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="ner", type="tagging", train=train, dev=dev, head={"label_pieces": "all"})
    result = chain.fit(spec, FAST, progress=False)
    head = chain.model.tasks["ner"].head
    words = [["alice", "visited", "newyorkshire", "today"]]  # the third word is several sub-words
    _, encoded = chain.model.encode(words, with_words=True)
    first, every = head.targets([["B-PER", "O", "B-LOC", "O"]], encoded), head.training_targets([["B-PER", "O", "B-LOC", "O"]], encoded)
    pieces = encoded.word_starts[0][3] - encoded.word_starts[0][2]
    assert pieces > 1 and (first != -100).sum() == 4 and (every != -100).sum() == encoded.lengths[0] - 2  # all but [CLS] [SEP]
    later = every[0, encoded.word_starts[0][2] + 1 : encoded.word_starts[0][3]]
    assert set(later.tolist()) == {head.labels.index("I-LOC")} and (every[0, [0, encoded.lengths[0] - 1]] == -100).all()
    assert result.validation["entity_f1"] > 0.9 and result.validation["n"] == 50
    answers = chain.predict(["alice visited new york"])
    assert [(e.type, e.text) for e in answers[0]["ner"].entities] == [("PER", "alice"), ("LOC", "new york")]
    with pytest.raises(ValueError, match="a CRF learns moves from word to word: remove `label_pieces: all`"):
        TaggingHead(["B-PER", "I-PER", "O"], {"crf": True, "label_pieces": "all"})


def test_tagging_learns_and_predicts_character_spans(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_conll(tmp_path / "train.conll", ner_sentences(200, 1))
    dev = write_conll(tmp_path / "dev.conll", ner_sentences(50, 2))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    result = chain.fit(TaskSpec(name="ner", type="tagging", train=train, dev=dev), FAST, progress=False)
    assert result.validation["entity_f1"] > 0.9
    assert set(result.validation["per_type"]) == {"LOC", "PER"}
    text = "alice visited new york"
    (prediction,) = chain.predict([text])
    entities = [(e.type, e.text, e.start, e.end) for e in prediction["ner"].entities]
    assert entities == [("PER", "alice", 0, 5), ("LOC", "new york", 14, 22)]
    prepared = chain.engine.prepare([text])  # predict = prepare, forward, decode
    assert chain.engine.decode(prepared, chain.engine.forward(prepared.rows)) == [prediction]
    reloaded = Chain.from_pretrained(chain.save_pretrained(tmp_path / "chain"))
    assert reloaded.predict([text]) == [prediction]

    # `finechain predict` on a pre-tokenised CoNLL file (a word per line; tag columns are ignored)
    sentences = ner_sentences(5, 7)
    write_conll(tmp_path / "new.conll", sentences)
    monkeypatch.setattr(sys, "argv", ["finechain", "predict", str(tmp_path / "chain"), "-i", str(tmp_path / "new.conll")])
    main()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    words = [[w for w, _ in s] for s in sentences]
    assert [line["words"] for line in lines] == words
    assert [line["ner"] for line in lines] == [p["ner"].to_dict() for p in chain.predict(words)]
    assert {"first_word", "last_word", "text"} <= set(lines[0]["ner"]["entities"][0])

    # a text of 60 words (62 tokens) with max_length 32: every word is tagged, read through overlapping windows
    long = " ".join(["alice visited new york and"] * 12)
    tags = chain.predict([long])[0]["ner"].tags
    assert len(tags) == 60 and tags[:4] == ["B-PER", "O", "B-LOC", "I-LOC"]
    assert any(tag != "O" for tag in tags[32:])  # words past the first window are tagged, not cut off as "O"
    gold = ["B-PER", "O", "B-LOC", "I-LOC", "O"] * 12
    scores = chain.score("ner", [long.split()], [gold])  # pre-split input: all 60 words are scored
    assert scores["per_type"]["PER"]["support"] == 12 and scores["per_type"]["LOC"]["support"] == 12


def test_windows_take_each_word_where_it_starts(tiny_backbone: Path) -> None:
    tokenizer = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32).model.tokenizer
    words = ["alice", "zqxv", "visited", "new", "yorkish", "and"] * 6  # 'zqxv', 'yorkish': several sub-words each
    windows = overflow_windows(tokenizer, [" ".join(words)], max_length=12, stride=4)
    assert len(windows.ids) > 4 and all(len(ids) <= 12 for ids in windows.ids)
    encoded = tokenizer(" ".join(words), return_overflowing_tokens=True, truncation=True, max_length=12, stride=4)
    best = windows.best_positions(0, len(words))
    for word, (window, position) in enumerate(best):  # every word found, at its own first sub-word
        word_ids = encoded.word_ids(window)
        assert word_ids[position] == word and ((position == 1 and window == 0) or word_ids[position - 1] != word)
        if position == 1 and window > 0:  # a window's first token starts a word only if the previous window lacks it
            assert word not in encoded.word_ids(window - 1)


def test_a_long_text_is_cut_into_windows_in_time_linear_in_its_length(tiny_backbone: Path) -> None:
    """Each window's words are found from the text's word starts, listed once per text: listing them once per window
    made one text of 200,000 words take minutes (8,000 windows x 200,000 starts); now it takes a second or two."""
    import time

    tokenizer = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32).model.tokenizer
    text = "!" * 200_000  # 200,000 one-character words
    started = time.perf_counter()
    windows = overflow_windows(tokenizer, [text], max_length=32, stride=8)
    assert len(windows.ids) > 8000 and time.perf_counter() - started < 20
    best = windows.best_positions(0, len(text))
    assert all(b is not None for b in best)  # every word found


def test_long_tagged_training_texts_are_cut_into_pieces_that_fit(tiny_backbone: Path) -> None:
    from finechain.data.pieces import fitting_pieces
    from finechain.data.prepare import Split

    tokenizer = Chain.from_backbone(str(tiny_backbone), split=2, max_length=16).model.tokenizer
    words = ["the", "zqxv", "alice", "smith", "visited", "new", "york"] * 4  # 'zqxv': several sub-words
    tags = ["O", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"] * 4
    raw = " ".join(words)
    split = Split([words, raw, ["short", "one"]], [tags, tags, ["O", "O"]], [3, 9, 12], "train.conll")
    pieces, cut = fitting_pieces(split, tokenizer, 16)
    assert cut == 2 and pieces.texts[-1] == ["short", "one"] and pieces.lines[-1] == 12
    listed = [p if isinstance(p, list) else p.split() for p in pieces.texts[:-1]]
    assert [w for p in listed for w in p] == words * 2  # every word once, in order
    assert [t for p in pieces.labels[:-1] for t in p] == tags * 2
    assert [len(p) for p in listed] == [len(t) for t in pieces.labels[:-1]]
    assert all(len(tokenizer(p, is_split_into_words=True)["input_ids"]) <= 16 for p in listed)  # each fits
    assert not any(t[0].startswith("I-") for t in pieces.labels)  # no entity cut where a cut outside one fits
    assert {type(p) for p in pieces.texts[: len(pieces.texts) // 2]} == {list} and isinstance(pieces.texts[-2], str)
    assert set(pieces.lines[:-1]) == {3, 9}


def test_a_tagger_learns_the_words_past_max_length(tiny_backbone: Path, tmp_path: Path) -> None:
    """Each training text: five 'NAME met NAME' clauses (15 words, past max_length 16 with its special tokens), then a
    sentence with places: cut into pieces that fit, the places are trained on (before, the cut took every place off,
    and the tagger never found one)."""
    import random

    rng = random.Random(0)
    people = [w for _ in range(5) for w in ((rng.choice(NAMES), "B-PER"), ("met", "O"), (rng.choice(NAMES), "B-PER"))]
    documents = [people + sentence for sentence in ner_sentences(80, 1)]
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=16)
    train = write_conll(tmp_path / "docs.conll", documents)
    chain.fit(TaskSpec(name="ner", type="tagging", train=train), FAST, progress=False)
    test = ner_sentences(40, 2)
    scores = chain.engine.score("ner", [[w for w, _ in s] for s in test], [[t for _, t in s] for s in test])
    assert scores["per_type"]["LOC"]["f1"] > 0.3 and scores["per_type"]["PER"]["f1"] > 0.5  # LOC: 0.0 before


def test_mixed_chain_answers_any_subset_in_one_pass(tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit(
        TaskSpec(name="ner", type="tagging", train=write_conll(tmp_path / "t.conll", ner_sentences(100, 1))),
        FAST.model_copy(update={"epochs": 2}),
        progress=False,
    )
    chain.fit(
        TaskSpec(name="sent", train=write_csv(tmp_path / "s.csv", sentiment_rows(60, 1))),
        FAST.model_copy(update={"epochs": 2}),
        progress=False,
    )
    chain.fit(
        TaskSpec(
            name="score", type="regression", train=write_csv(tmp_path / "r.csv", [(t, float(len(t))) for t, _ in sentiment_rows(60, 2)])
        ),
        FAST.model_copy(update={"epochs": 2}),
        progress=False,
    )
    calls = {"n": 0}
    original = chain.model.trunk.embeddings.forward  # every trunk pass starts with the embeddings

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(chain.model.trunk.embeddings, "forward", counting)
    texts = ["bob met carol in rome", "good movie"]
    everything = chain.predict(texts, batch_size=64)
    assert calls["n"] == 1 and set(everything[0]) == {"ner", "sent", "score"}
    subset = chain.predict(texts, tasks=["sent", "ner"])
    assert subset == [{k: v for k, v in row.items() if k in {"sent", "ner"}} for row in everything]


def test_tagging_spec_errors_through_data_loading(tmp_path: Path) -> None:
    from finechain.data.prepare import load_task_data
    from finechain.heads import head_type

    train = write_conll(tmp_path / "t.conll", ner_sentences(20, 1))
    dev = tmp_path / "d.conll"
    dev.write_text("alice B-PER\nparis B-CITY\n")
    with pytest.raises(DataError, match=r"d\.conll:1: label 'B-CITY' does not occur"):
        load_task_data(TaskSpec(name="n", type="tagging", train=train, dev=dev), head_type("tagging"), seed=0)
    csv = write_csv(tmp_path / "c.csv", sentiment_rows(10, 0))
    with pytest.raises(DataError, match="format 'conll' is for tagging"):
        load_task_data(TaskSpec(name="c", train=csv, format="conll"), head_type("classification"), seed=0)
    with pytest.raises(DataError, match=r"c\.csv: tagging tasks read CoNLL or JSONL files, not CSV \(fix: give it a \.conll"):
        load_task_data(TaskSpec(name="n", type="tagging", train=csv), head_type("tagging"), seed=0)
    with pytest.raises(DataError, match=r"d\.conll: a '\.conll' file holds tagged words, for tagging tasks; this is a classification"):
        load_task_data(TaskSpec(name="c", train=dev), head_type("classification"), seed=0)


def test_a_crf_grown_by_an_update_keeps_its_old_moves(tiny_backbone: Path) -> None:
    """``finechain update`` adding entity types to a CRF tagger: moves between old tags are kept, new ones start at 0,
    and the head decodes with the grown scores once evaluated."""
    import torch

    from finechain.heads.tagging import TaggingHead
    from finechain.jobs.updating import grown_task

    model = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32).model
    old = model.new_task(TaggingHead(["B-PER", "I-PER", "O"], {"crf": True}))
    with torch.no_grad():
        for tensor in old.head_layer.transition_scores().values():
            tensor.copy_(torch.randn_like(tensor))
    labels = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    grown = grown_task(old, labels, model.new_task(TaggingHead(labels, {"crf": True}))).eval()
    before, after = old.head_layer.transition_scores(), grown.head_layer.transition_scores()
    assert torch.equal(after["moves"][:3, :3], before["moves"]) and torch.equal(after["start"][:3], before["start"])
    assert not after["moves"][3:].any() and not after["moves"][:, 3:].any() and not after["end"][3:].any()
    saved = grown.head.config()["state"]["transitions"]
    assert np.allclose(saved["moves"], after["moves"].detach().numpy()) and np.allclose(saved["end"], after["end"].detach().numpy())


def test_one_tagging_task_tunes_every_layer_under_split_auto(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Per-word heads lose F1 to frozen lower layers on small or out-of-genre data (the tagging-defaults benchmark): a
    spec of one tagging task resolves ``split: auto`` to 0, while a sentence task keeps the frozen trunk's
    ``N - round(2N/3)``, an explicit split wins, and two tasks keep the joint trunk's depth."""
    from finechain.jobs.checking import check_spec

    write_conll(tmp_path / "n.conll", ner_sentences(40, 1))
    write_csv(tmp_path / "s.csv", sentiment_rows(40, 1))
    ner, sent = "  - {name: ner, type: tagging, train: n.conll}\n", "  - {name: sent, train: s.csv}\n"

    def spec(name: str, tasks: str, extra: str = "") -> Path:
        path = tmp_path / name
        path.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\ntraining: {{epochs: 1, min_steps: 0}}\n{extra}tasks:\n{tasks}")
        return path

    assert check_spec(spec("sent.yaml", sent)).split == 1  # 4-layer backbone: 4 - round(8/3)
    assert check_spec(spec("fixed.yaml", ner, "split: 2\n")).split == 2
    assert check_spec(spec("both.yaml", ner + sent)).split == 3  # joint: round(8/3)
    monkeypatch.setattr(sys, "argv", ["finechain", "train", str(spec("ner.yaml", ner)), "--out", str(tmp_path / "c"), "-q"])
    main()
    manifest = json.loads((tmp_path / "c" / "finechain.json").read_text())
    assert manifest["split"] == 0 and manifest["trunk"] is None  # no tuned trunk: every layer is the task's
    capsys.readouterr()
