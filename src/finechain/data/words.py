"""Words of raw text for token-level tasks, cut the way tagged training data is (CoNLL / Penn Treebank style).

A tagger learns one tag per word of its training files, and those words follow the Penn Treebank conventions
that CoNLL-2003, OntoNotes and most NER corpora use: ``U.N.``, ``O'Neil``, ``1,000`` and ``e-mail`` are one word;
``Paris.`` is ``Paris`` + ``.``; ``Neil's`` is ``Neil`` + ``'s``; ``don't`` is ``do`` + ``n't``. A subword
tokenizer's own pre-tokenizer splits at every punctuation mark instead (``U`` ``.`` ``N`` ``.``), which hands
the tagger words it never saw labelled. The rules are for English-like text; other scripts fall back to
runs of word characters and single symbols.
"""

from __future__ import annotations

import bisect
import re

_CLITIC = r"(?i:s|re|ve|ll|d|m)(?!\w)"
_ABBREVIATIONS = (
    "Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Inc|Corp|Co|Ltd|Plc|Bros|Gen|Gov|Sen|Rep|Rev|Lt|Col|Capt|Sgt|Mt|Ft|vs|No|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
WORD = re.compile(
    rf"""
    (?i:n't)(?!\w)                                  # the negation clitic: do|n't
  | \w+?(?=(?i:n't)(?!\w))                          # the word before it
  | ['’]{_CLITIC}                                   # 's 're 've 'll 'd 'm
  | (?:[^\W\d_]\.){{2,}}                            # U.S. U.N. e.g.
  | (?:{_ABBREVIATIONS})\.(?!\w)                    # Mr. Corp. Jan.
  | [A-Z]\.(?=\s)                                   # an initial: John F. Kennedy
  | \w+(?:(?:[-&.,/:+]|['’](?!{_CLITIC}))\w+)*      # words with inner - & . , / : + or apostrophes: O'Neil 1,000 3.5
  | \.\d+                                           # .5
  | \.{{2,}}|-{{2,}}                                # ... --
  | \S                                              # anything else, one character at a time
    """,
    re.VERBOSE,
)


def split_words(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the words of ``text``.

    Example:
        >>> text = "U.N. envoy O'Neil's e-mail didn't reach Paris."
        >>> [text[a:b] for a, b in split_words(text)]
        ['U.N.', 'envoy', "O'Neil", "'s", 'e-mail', 'did', "n't", 'reach', 'Paris', '.']
    """
    return [match.span() for match in WORD.finditer(text)]


def first_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> dict[int, int]:
    """``{word: position}`` of each word's first token, from the tokens' character ``offsets`` (special tokens have
    empty offsets and belong to no word). A word no token starts in (cut off, or dropped by the tokenizer) is absent.

    Example:
        >>> first_tokens([(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (5, 10), (0, 0)], [(0, 4), (5, 10)])
        {0: 1, 1: 5}
    """
    starts = [start for start, _ in spans]
    first: dict[int, int] = {}
    for position, (start, end) in enumerate(offsets):
        word = bisect.bisect_right(starts, start) - 1
        if end > start and word >= 0 and start < spans[word][1] and word not in first:
            first[word] = position
    return first
