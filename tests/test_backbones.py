"""Backbones other than BERT: a RoBERTa-style byte-level BPE encoder, built here from scratch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finechain import Chain
from finechain.spec import TaskSpec, TrainingConfig

from .conftest import CITIES, FILLER, NAMES, ner_sentences, write_conll


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-wide random RoBERTa with a byte-level BPE vocabulary trained on the toy words."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    folder = tmp_path_factory.mktemp("tiny-roberta")
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(["the", *NAMES, *CITIES, *FILLER, "new", "york", "visited", "met"])] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))  # vocab.json + merges.txt
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line.strip()]
    tokenizer = RobertaTokenizer(vocab=json.loads((folder / "vocab.json").read_text()), merges=merges)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    sizes = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 66}
    config = RobertaConfig(vocab_size=len(tokenizer), **sizes, **ids)
    RobertaModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_word_lists_are_tokenised_like_running_text_on_a_byte_level_bpe(tiny_roberta: Path, tmp_path: Path) -> None:
    chain = Chain.from_backbone(str(tiny_roberta), split=2, max_length=32)
    words = ["alice", "visited", "new", "york"]
    listed, _ = chain.model.encode([words], with_words=True)
    running, encoded = chain.model.encode([" ".join(words)], with_words=True)
    assert listed == running  # every word with its leading space, as in running text
    tokens = chain.model.tokenizer.convert_ids_to_tokens(running[0])
    assert encoded is not None and all(tokens[p].startswith("Ġ") for p in encoded.word_starts[0])
    chain.fit(
        TaskSpec(name="ner", type="tagging", train=write_conll(tmp_path / "t.conll", ner_sentences(120, 1))),
        TrainingConfig(epochs=10, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0),
        progress=False,
    )
    found = chain.predict(["bob visited new york"])[0]["ner"].entities
    assert [(e.text, e.type) for e in found] == [("bob", "PER"), ("new york", "LOC")]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_check_counts_tokens_as_the_model_cuts_them_without_transformers(kind: str, tiny_backbone: Path, tiny_roberta: Path) -> None:
    """``finechain check`` reads ``tokenizer.json`` with the tokenizers library alone (no PyTorch): the same ids as the
    tokenizer the model is loaded with, running text and word lists, byte-level BPE included (its prefix space)."""
    from finechain.model.backbone import inspect_backbone, inspect_tokenizer, load_tokenizer

    folder = tiny_backbone if kind == "bert" else tiny_roberta
    light, full = inspect_tokenizer(folder), load_tokenizer(folder)
    texts = ["alice visited new york", "bob met carol in paris, then left."]
    words = [text.split() for text in texts]
    for given, split in ((texts, False), (words, True)):
        expected = full(given, truncation=True, max_length=64, is_split_into_words=split)["input_ids"]
        assert light(given, truncation=True, max_length=64, is_split_into_words=split)["input_ids"] == expected
    assert light.model_max_length == full.model_max_length
    assert inspect_backbone(folder).num_hidden_layers == 4
