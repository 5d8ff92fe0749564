"""A tokenizer read from a ``tokenizer.json`` with the ``tokenizers`` library alone (no transformers, no PyTorch): what
an exported chain tokenises with. It answers the calls :mod:`finechain.data.tokens` makes the way a transformers fast
tokenizer does (the same backend underneath), so both paths cut texts into the same token ids and windows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finechain.errors import ArtifactError, short_reason


class TokenizerFile:
    """``tokenizer.json`` as a callable with the subset of a transformers fast tokenizer's interface finechain uses.

    Example:
        >>> tokenizer = TokenizerFile("exported/tokenizer.json", pad_token_id=0)  # doctest: +SKIP
        >>> tokenizer(["hello world"], truncation=True, max_length=16)["input_ids"]  # doctest: +SKIP
        [[101, 7592, 2088, 102]]
    """

    def __init__(self, path: str | Path, pad_token_id: int = 0, prefix_space: bool = False, fix: str = "export the chain again") -> None:
        from tokenizers import Tokenizer

        try:
            text = Path(path).read_text(encoding="utf-8")
            if prefix_space:  # as a backbone's byte-level BPE is loaded for finechain (model.backbone.load_tokenizer)
                text = _with_prefix_space(text)
            self.backend = Tokenizer.from_str(text)
        except Exception as error:  # the tokenizers library raises its own exception type for a bad file
            raise ArtifactError(f"the tokenizer cannot be read ({short_reason(error)})", file=path, fix=fix) from None
        self.backend.no_padding()
        self.pad_token_id = pad_token_id
        self.model_max_length: int | None = None

    def __call__(
        self,
        texts: Sequence[str] | Sequence[Sequence[str]],
        truncation: bool = True,
        max_length: int = 512,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        is_split_into_words: bool = False,
        return_offsets_mapping: bool = False,
    ) -> _Batch:
        """Token ids (and offsets, word ids, overflow windows) for ``texts``: one encoding per text, or with
        ``return_overflowing_tokens`` each text's windows in order, as transformers returns them."""
        if truncation:
            self.backend.enable_truncation(max_length, stride=stride, strategy="longest_first")
        else:
            self.backend.no_truncation()
        encodings = self.backend.encode_batch(list(texts), is_pretokenized=is_split_into_words, add_special_tokens=True)
        rows, owners = [], []
        for owner, encoding in enumerate(encodings):
            parts = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows.extend(parts)
            owners.extend([owner] * len(parts))
        return _Batch(rows, owners)


def pipeline_steps(spec: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The steps of a ``tokenizer.json``'s ``pre_tokenizer`` or ``post_processor``: its ``Sequence``'s, or itself.

    Example:
        >>> pipeline_steps({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}]}}, "pre_tokenizer")
        [{'type': 'ByteLevel'}]
        >>> pipeline_steps({"pre_tokenizer": None}, "pre_tokenizer")
        [{}]
    """
    part = spec.get(key) or {}
    children = "pretokenizers" if key == "pre_tokenizer" else "processors"
    return part.get(children, [part]) if part.get("type") == "Sequence" else [part]


def _with_prefix_space(text: str) -> str:
    """A ``tokenizer.json`` whose byte-level steps (pre-tokenizer, post-processor) add a space before the first word.

    Example:
        >>> json.loads(_with_prefix_space('{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}}'))
        {'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': True}}
    """
    spec = json.loads(text)
    for key in ("pre_tokenizer", "post_processor"):
        for step in pipeline_steps(spec, key):
            if step.get("type") in ("ByteLevel", "RobertaProcessing") and "add_prefix_space" in step:
                step["add_prefix_space"] = True
    return json.dumps(spec)


class _Batch(dict):
    """A batch encoding: ``input_ids``, ``offset_mapping``, ``overflow_to_sample_mapping`` by key, ``word_ids(row)``."""

    def __init__(self, rows: list[Any], owners: list[int]) -> None:
        super().__init__(
            input_ids=[list(row.ids) for row in rows],
            offset_mapping=[list(row.offsets) for row in rows],
            overflow_to_sample_mapping=owners,
        )
        self._rows = rows

    def word_ids(self, row: int) -> list[int | None]:
        """The word each token of ``row`` belongs to (``None`` for special tokens)."""
        return list(self._rows[row].word_ids)
