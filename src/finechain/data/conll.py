"""Read CoNLL-style token tagging files: one ``token ... TAG`` line per token, blank line between sentences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finechain.errors import DataError
from finechain.io import read_text_file


@dataclass(frozen=True)
class TaggedSentence:
    """Words, their BIO tags, and the line the sentence starts on."""

    words: list[str]
    tags: list[str]
    line: int


BIOES_TO_BIO = {"S-": "B-", "U-": "B-", "E-": "I-", "L-": "I-"}  # BIOES / BILOU single and last tokens


def check_tag(tag: str, previous: str, path: str | Path, line: int, strict: bool) -> str:
    """``tag`` checked for BIO form; an ``I-X`` that does not continue ``previous`` becomes ``B-X`` (an error if ``strict``).
    BIOES / BILOU tags become BIO: ``S-X``/``U-X`` -> ``B-X``, ``E-X``/``L-X`` -> ``I-X``.

    Example:
        >>> check_tag("I-PER", "O", "a.conll", 3, strict=False), check_tag("E-PER", "B-PER", "a.conll", 4, strict=True)
        ('B-PER', 'I-PER')
    """
    original = tag
    if len(tag) > 2 and tag[:2] in BIOES_TO_BIO:
        tag = BIOES_TO_BIO[tag[:2]] + tag[2:]
    if tag != "O" and (len(tag) < 3 or tag[:2] not in {"B-", "I-"}):
        raise DataError(f"tag '{tag}' is not in BIO form", file=path, line=line, fix="use O, B-TYPE or I-TYPE (or BIOES: S-, E-)")
    if tag.startswith("I-") and previous[2:] != tag[2:]:
        if strict:
            raise DataError(
                f"'{original}' follows '{previous or 'the sentence start'}' (strict IOB2)",
                file=path,
                line=line,
                fix=f"start the entity with B-{tag[2:]}, or set strict_bio: false to repair IOB1 input",
            )
        return "B-" + tag[2:]
    return tag


CONLL_SUFFIXES = {".conll", ".conllu", ".iob", ".bio", ".bioes"}


def is_conllu(path: str | Path) -> bool:
    """Whether ``path`` is CoNLL-U (UD): ``#`` comment lines, ``ID FORM ...`` tab-separated columns.

    Example:
        >>> is_conllu("en_ewt-ud-train.conllu"), is_conllu("train.conll")
        (True, False)
    """
    return Path(path).suffix.lower() == ".conllu"


def line_fields(raw: str, conllu: bool) -> list[str] | None:
    """The columns of one line: split on tabs when it has any (a token may hold spaces), else on whitespace.
    ``[]`` for a blank line (a sentence break); ``None`` for a line that holds no token: in CoNLL-U, a ``#`` comment,
    a multi-word token's range (``3-4``) or an empty node (``5.1``).

    Example:
        >>> line_fields("New York\\tB-LOC", False), line_fields("EU NNP B-ORG", False), line_fields("3-4\\tdon't\\t_", True)
        (['New York', 'B-LOC'], ['EU', 'NNP', 'B-ORG'], None)
    """
    if conllu and raw.startswith("#"):
        return None
    if "\t" in raw:
        fields = [field.strip() for field in raw.rstrip("\r\n\t ").split("\t")]
        fields = fields if any(fields) else []
    else:
        fields = raw.split()
    if conllu and fields and not fields[0].isdigit():
        return None
    return fields


def read_conll(
    path: str | Path,
    *,
    token_column: int | None = None,
    tag_column: int = -1,
    strict: bool = False,
    keep_docstart: bool = False,
) -> list[TaggedSentence]:
    """Sentences from a CoNLL file. Columns split on tabs, or on whitespace in lines without tabs; ``-DOCSTART-``
    lines are dropped by default. The token is column 0, or 1 (FORM) in CoNLL-U files, whose comments, multi-word
    ranges and empty nodes are skipped (see :func:`line_fields`).

    With ``strict`` an ``I-X`` that does not continue an ``X`` entity is an error; otherwise it is
    repaired to ``B-X`` (IOB1 -> IOB2).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.conll"
        >>> _ = p.write_text("-DOCSTART- O\\n\\nEU B-ORG\\nrejects O\\n\\nPeter B-PER\\n")
        >>> [(s.words, s.tags, s.line) for s in read_conll(p)]
        [(['EU', 'rejects'], ['B-ORG', 'O'], 3), (['Peter'], ['B-PER'], 6)]
    """
    path = Path(path)
    content = read_text_file(path)
    if not content.strip():
        raise DataError("file is empty", file=path, fix="write one 'token TAG' line per token, a blank line between sentences")
    conllu = is_conllu(path)
    token_column = (1 if conllu else 0) if token_column is None else token_column
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    needed = max(token_column, tag_column if tag_column >= 0 else -tag_column - 1) + 1

    def flush() -> None:
        if words:
            sentences.append(TaggedSentence(list(words), list(tags), start))
        words.clear()
        tags.clear()

    for number, raw in enumerate(content.splitlines(), start=1):
        fields = line_fields(raw, conllu)
        if fields is None:
            continue
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-" and not keep_docstart:
            flush()
            continue
        if len(fields) < max(2, needed):
            raise DataError(
                f"expected at least {max(2, needed)} columns (token and tag), found {len(fields)}",
                file=path,
                line=number,
                fix="write 'token TAG' per line, or set token_column / tag_column",
            )
        if not fields[token_column]:
            raise DataError("empty token", file=path, line=number, fix="write the token in its column, or remove the line")
        if not words:
            start = number
        tags.append(check_tag(fields[tag_column], tags[-1] if tags else "", path, number, strict))
        words.append(fields[token_column])
    flush()
    if not sentences:
        raise DataError("no sentences found", file=path, fix="write one 'token TAG' line per token")
    return sentences


def read_word_lists(path: str | Path, token_column: int | None = None) -> list[list[str]]:
    """Pre-tokenised sentences to predict: one token per line (the first column - FORM in CoNLL-U - or
    ``token_column``; tags may follow and are ignored), a blank line between sentences, ``-DOCSTART-`` lines dropped.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "in.conll"
        >>> _ = p.write_text("-DOCSTART- O\\n\\nEU B-ORG\\nrejects\\n\\nPeter\\n")
        >>> read_word_lists(p)
        [['EU', 'rejects'], ['Peter']]
    """
    path = Path(path)
    conllu = is_conllu(path)
    token_column = (1 if conllu else 0) if token_column is None else token_column
    sentences: list[list[str]] = [[]]
    for number, raw in enumerate(read_text_file(path).splitlines(), start=1):
        fields = line_fields(raw, conllu)
        if fields is None:
            continue
        if not fields or fields[0] == "-DOCSTART-":
            if sentences[-1]:
                sentences.append([])
            continue
        if len(fields) <= token_column:
            raise DataError(f"no column {token_column} on this line", file=path, line=number, fix="check token_column")
        sentences[-1].append(fields[token_column])
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError("no sentences found", file=path, fix="write one token per line, a blank line between sentences")
    return sentences
