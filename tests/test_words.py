"""Raw text is cut into words the way tagged corpora cut them, and each word is read at its first token."""

from __future__ import annotations

import itertools
import random
import string
from pathlib import Path

import pytest

from finechain import Chain
from finechain.data.words import first_tokens, split_words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("The U.S. and U.K. sent Mr. Smith.", ["The", "U.S.", "and", "U.K.", "sent", "Mr.", "Smith", "."]),
        ("Microsoft Corp. said (Reuters) it won't sell", ["Microsoft", "Corp.", "said", "(", "Reuters", ")", "it", "wo", "n't", "sell"]),
        ("O'Neil's e-mail: AT&T paid $1,000.50, i.e.", ["O'Neil", "'s", "e-mail", ":", "AT&T", "paid", "$", "1,000.50", ",", "i.e."]),
        ("up 3.5%!", ["up", "3.5", "%", "!"]),
        ("John F. Kennedy -- 1996-08-22 ... batting .333", ["John", "F.", "Kennedy", "--", "1996-08-22", "...", "batting", ".333"]),
        ("  Zürich\tand São Paulo\n", ["Zürich", "and", "São", "Paulo"]),
        ("东京 and 🎉🇬🇧", ["东", "京", "and", "🎉", "🇬🇧"]),  # a flag is two regional indicators: one word
        ("I ❤️ it👍🏽 👨\u200d👩\u200d👧!", ["I", "❤️", "it", "👍🏽", "👨\u200d👩\u200d👧", "!"]),  # selector, skin tone, joins
        ("北京Paris在東京に住むコーヒー", ["北", "京", "Paris", "在", "東", "京", "に", "住", "む", "コ", "ー", "ヒ", "ー"]),
        ("cafe\u0301 in मुंबई और दिल्ली, กรุงเทพฯ", ["cafe\u0301", "in", "मुंबई", "और", "दिल्ली", ",", "กรุงเทพฯ"]),
        ("Москва — столица России. 서울에서 만나요", ["Москва", "—", "столица", "России", ".", "서울에서", "만나요"]),
        (
            "see https://t.co/x_1?a=b, (www.acme.com/a). Mail j.o+1@acme.co.uk!",
            ["see", "https://t.co/x_1?a=b", ",", "(", "www.acme.com/a", ")", ".", "Mail", "j.o+1@acme.co.uk", "!"],
        ),
        ("", []),
    ],
)
def test_words_follow_treebank_conventions(text: str, words: list[str]) -> None:
    assert [text[a:b] for a, b in split_words(text)] == words


def test_words_cover_every_visible_character_once() -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "  \t\néüß东’—🎉\u0301कुंあ🇬🇧\u200d\ufe0f🏽"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        spans = split_words(text)
        assert all(a < b for a, b in spans) and all(b <= c for (_, b), (c, _) in itertools.pairwise(spans))
        assert "".join(text[a:b] for a, b in spans) == "".join(text.split())


def test_ascii_text_takes_the_same_words_from_the_faster_engine() -> None:
    from finechain.data.words import _ASCII_WORD, WORD

    rng = random.Random(1)
    alphabet = string.ascii_letters[:8] + "nt'sSDLM" + string.digits[:3] + ".,-&:/+$%()  \t"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert [m.span() for m in _ASCII_WORD.finditer(text)] == [m.span() for m in WORD.finditer(text)], text


def test_first_tokens_skips_specials_and_words_without_tokens() -> None:
    spans = [(0, 4), (5, 9), (10, 11)]  # "U.N. said x" with "x" dropped by the tokenizer
    offsets = [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (5, 9), (0, 0)]
    assert first_tokens(offsets, spans) == {0: 1, 1: 5}


def test_raw_text_words_are_read_at_their_first_sub_word(tiny_backbone: Path) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=64)
    text = "Merkel's U.N. visit, in Paris."
    ids, encoded = chain.model.encode([text], with_words=True)
    assert encoded is not None and ids == chain.model.encode([text])[0]  # the same token ids as sequence-level tasks read
    words = [text[a:b] for a, b in encoded.word_spans[0]]
    assert words == ["Merkel", "'s", "U.N.", "visit", ",", "in", "Paris", "."]
    tokens = chain.model.tokenizer.convert_ids_to_tokens(ids[0])
    firsts = [tokens[p] for p in encoded.word_starts[0]]
    assert firsts == [chain.model.tokenizer.tokenize(w)[0] for w in words]


def test_every_word_of_non_latin_text_has_a_token(tiny_backbone: Path) -> None:
    """Combining marks stay inside their word and each Chinese character is a word, so no word is left without a
    token (such a word would be tagged "O" and could cut an entity in two)."""
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=64)
    text = "在北京 visited मुंबई and cafe\u0301 กรุงเทพฯ"
    _, encoded = chain.model.encode([text], with_words=True)
    assert encoded is not None and encoded.word_spans is not None
    assert [text[a:b] for a, b in encoded.word_spans[0]] == ["在", "北", "京", "visited", "मुंबई", "and", "cafe\u0301", "กรุงเทพฯ"]
    assert None not in encoded.word_starts[0] and len(set(encoded.word_starts[0])) == 8
