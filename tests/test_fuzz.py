"""Property-based tests: the readers and the spec loader, given random bytes or random structures, return data or
raise finechain's own one-line error, never anything else."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finechain.data.conll import read_conll, read_word_lists
from finechain.data.readers import read_examples, read_texts
from finechain.data.tagged import read_tagged_jsonl
from finechain.errors import FinechainError
from finechain.spec import load_chain_spec, load_task_specs

# derandomized: CI sees the same examples each run (a failure is reproducible); raise max_examples to search harder
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SCRATCH = Path(tempfile.mkdtemp(prefix="finechain-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, True)

# bytes that look like the files they fuzz (separators, quotes, brackets, tags, UTF-8 and broken UTF-8), and any bytes
TEXTY = st.lists(
    st.sampled_from(
        [
            b"text",
            b"label",
            b",",
            b"\t",
            b"\n",
            b"\r\n",
            b'"',
            b"'",
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b" ",
            b"B-PER",
            b"I-LOC",
            b"O",
            b"-DOCSTART-",
            b"\xc3\xa9",
            b"\xff",
            b"\x00",
            b"1",
            b"2.5",
            b"nan",
            b"null",
            b"true",
            b"#",
            b"-",
            b"\xef\xbb\xbf",
        ]
    ),
    max_size=60,
).map(b"".join)
ANY_BYTES = st.one_of(TEXTY, st.binary(max_size=300))


def _file(content: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(dir=SCRATCH, suffix=suffix, delete=False) as handle:
        handle.write(content)
    return Path(handle.name)


def _only_our_errors(read: Any, *args: Any, **kwargs: Any) -> None:
    try:
        read(*args, **kwargs)
    except FinechainError as error:
        assert "\n" not in str(error)  # one line


@SETTINGS
@given(content=ANY_BYTES, suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]))
def test_labelled_readers(content: bytes, suffix: str) -> None:
    path = _file(content, suffix)
    _only_our_errors(read_examples, path)
    _only_our_errors(read_examples, path, label_column=None)
    _only_our_errors(read_texts, path)


@SETTINGS
@given(content=ANY_BYTES, suffix=st.sampled_from([".conll", ".conllu", ".txt"]), strict=st.booleans())
def test_conll_readers(content: bytes, suffix: str, strict: bool) -> None:
    path = _file(content, suffix)
    _only_our_errors(read_conll, path, strict=strict)
    _only_our_errors(read_word_lists, path)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@SETTINGS
@given(rows=st.lists(st.one_of(JSON_VALUES, st.fixed_dictionaries({"text": JSON_VALUES, "label": JSON_VALUES})), max_size=5))
def test_tagged_jsonl_reader(rows: list[Any]) -> None:
    path = _file("\n".join(json.dumps(r) for r in rows).encode(), ".jsonl")
    _only_our_errors(read_tagged_jsonl, path, "text", "label", False)


SPEC_KEYS = [
    "backbone",
    "split",
    "max_length",
    "sharing",
    "joint",
    "training",
    "tasks",
    "name",
    "type",
    "train",
    "head",
    "branch",
    "decoding",
    "pooling",
    "epochs",
    "learning_rate",
    "mode",
    "rank",
    "metric",
    "loss_weights",
    "device",
]
SPEC_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(), st.sampled_from(SPEC_KEYS), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(SPEC_KEYS), inner, max_size=5)),
    max_leaves=20,
)


@SETTINGS
@given(data=SPEC_VALUES)
def test_spec_loader_on_random_structures(data: Any) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    path = _file(text.encode(), ".yaml")
    _only_our_errors(load_chain_spec, path)
    _only_our_errors(load_task_specs, path)


@SETTINGS
@given(
    content=st.one_of(
        ANY_BYTES,
        st.lists(
            st.sampled_from(
                [
                    b"tasks:",
                    b"\n",
                    b"  - ",
                    b"{",
                    b"}",
                    b"name: a",
                    b"&x ",
                    b"*x",
                    b"!!python/object ",
                    b"train: a.csv",
                    b":",
                    b"\t",
                    b"[",
                    b"]",
                ]
            ),
            max_size=40,
        ).map(b"".join),
    )
)
def test_spec_loader_on_random_bytes(content: bytes) -> None:
    path = _file(content, ".yaml")
    _only_our_errors(load_chain_spec, path)
    _only_our_errors(load_task_specs, path)
