"""Words of raw text for token-level tasks, cut the way tagged training data is (CoNLL / Penn Treebank style).

A tagger learns one tag per word of its training files, and those words follow the Penn Treebank conventions
that CoNLL-2003, OntoNotes and most NER corpora use: ``U.N.``, ``O'Neil``, ``1,000`` and ``e-mail`` are one word
(and so are a web or e-mail address, as tokenizers of web text and tweet corpora keep them);
``Paris.`` is ``Paris`` + ``.``; ``Neil's`` is ``Neil`` + ``'s``; ``don't`` is ``do`` + ``n't``. A subword
tokenizer's own pre-tokenizer splits at every punctuation mark instead (``U`` ``.`` ``N`` ``.``), which hands
the tagger words it never saw labelled. The rules are for English-like text; other scripts fall back to
runs of word characters (combining marks included: Devanagari, Thai, Arabic vowel signs, NFD accents) and single
symbols (with their modifiers: a flag, an emoji with its skin tone). Chinese characters and Japanese kana are one word
each, as character-level CJK corpora tag them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

import regex

_ABBREVIATIONS = (
    "Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Inc|Corp|Co|Ltd|Plc|Bros|Gen|Gov|Sen|Rep|Rev|Lt|Col|Capt|Sgt|Mt|Ft|vs|No|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
# {w}: a word character; {clitic}: 's 're 've 'll 'd 'm without the apostrophe
_PATTERN = r"""
    (?i:(?:https?|ftp)://|www\.)[^\s<>"]*[^\s<>".,;:!?')\]}}]  # a web address, without the punctuation after it
  | [\w.%+-]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{{2,}}       # an e-mail address
  | (?i:n't)(?!{w})                              # the negation clitic: do|n't
  | {w}+?(?=(?i:n't)(?!{w}))                     # the word before it
  | ['’]{clitic}                                 # 's 're 've 'll 'd 'm
  | (?:[^\W\d_]\.){{2,}}                         # U.S. U.N. e.g.
  | (?:{abbreviations})\.(?!{w})                 # Mr. Corp. Jan.
  | [A-Z]\.(?=\s)                                # an initial: John F. Kennedy
  | {w}+(?:(?:[-&.,/:+]|['’](?!{clitic})){w}+)*  # words with inner - & . , / : + or apostrophes: O'Neil 1,000 3.5
  | \.\d+                                        # .5
  | \.{{2,}}|-{{2,}}                             # ... --
  | {other}                                      # anything else (a CJK character too), one at a time
"""


def _compile(engine: Any, w: str, other: str) -> re.Pattern[str]:
    clitic = rf"(?i:s|re|ve|ll|d|m)(?!{w})"
    return engine.compile(_PATTERN.format(w=w, clitic=clitic, abbreviations=_ABBREVIATIONS, other=other), engine.VERBOSE)


# any text: a word character is a letter or digit with its combining marks (\w of the regex package), but not a
# Chinese character or kana; any other character is taken with what the eye sees as part of it (a grapheme cluster,
# \X: a flag's two regional indicators, an emoji with its skin tone, variation selector or zero-width joins). ASCII
# text: the same rules in the standard library's faster engine
WORD = _compile(regex, r"[^\W\p{Han}\p{Hiragana}\p{Katakana}]", r"(?!\s)\X")
_ASCII_WORD = _compile(re, r"\w", r"\S")


def split_words(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the words of ``text``.

    Example:
        >>> text = "U.N. envoy O'Neil's e-mail didn't reach Paris."
        >>> [text[a:b] for a, b in split_words(text)]
        ['U.N.', 'envoy', "O'Neil", "'s", 'e-mail', 'did', "n't", 'reach', 'Paris', '.']
    """
    return [match.span() for match in (_ASCII_WORD if text.isascii() else WORD).finditer(text)]


def first_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], starts: Sequence[int] | None = None) -> dict[int, int]:
    """``{word: position}`` of each word's first token, from the tokens' character ``offsets`` (special tokens have
    empty offsets and belong to no word). A token whose offsets take in the space before a word (tokenizers that do
    not trim offsets) belongs to that word. A word no token reaches (cut off, or dropped by the tokenizer) is absent.

    Example:
        >>> first_tokens([(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (5, 10), (0, 0)], [(0, 4), (5, 10)])
        {0: 1, 1: 5}
        >>> first_tokens([(0, 0), (0, 4), (4, 10), (0, 0)], [(0, 4), (5, 10)])  # " Paris": offsets from the space
        {0: 1, 1: 2}
    """
    if starts is None:  # the spans' starts: a caller that maps many windows of one text passes them once
        starts = [start for start, _ in spans]
    first: dict[int, int] = {}
    for position, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        word = bisect.bisect_right(starts, start) - 1
        if word < 0 or start >= spans[word][1]:  # the token starts between words: it is the next word's, if it reaches it
            word += 1
            if word >= len(spans) or end <= spans[word][0]:
                continue
        if word not in first:
            first[word] = position
    return first
