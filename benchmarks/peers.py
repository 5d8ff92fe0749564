"""The peers every suite runs next to finechain: Hugging Face ``Trainer`` fine-tunes of the same backbone.

``method="full"`` is the usual full fine-tune (lr 5e-5, batch 32, dynamic padding); ``method="lora"`` wraps
the same model with ``peft`` LoRA (rank 8, alpha 16 on query/value, peft's default for BERT; lr 5e-4);
``full-bf16`` / ``lora-bf16`` add the Trainer's bf16 mixed precision (``bf16=True``, on CPU too).
Both report the wall time of ``trainer.train()`` only: their tokenising and evaluation are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import peer_training_args

LEARNING_RATE = {"full": 5e-5, "lora": 5e-4}
# a method may end in "-bf16": the same recipe with the Trainer's bf16 mixed precision (also on CPU)


@dataclass
class PeerRun:
    """What one peer fine-tune produced: a metric per evaluation set, train time and size."""

    scores: dict[str, float]
    seconds: float
    samples_per_second: float
    trainable_parameters: int
    predictions: dict[str, list[str]] = field(default_factory=dict)  # per evaluation set, where the peer records them


def _fine_tune(
    kind: str,
    backbone: Path,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    num_labels: int,
    evaluate: Callable[[Any], dict[str, float]],
    *,
    epochs: int,
    seed: int,
    method: str,
    device: str,
    learning_rate: float | None = None,
) -> PeerRun:
    """Build the ``kind`` model (``sequence`` or ``token``), train it with the Trainer on ``rows``, then score it.

    ``learning_rate`` overrides the method's usual one (``LEARNING_RATE``)."""
    import transformers
    from transformers import Trainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    auto_cls, collator_cls, task_type = {
        "sequence": ("AutoModelForSequenceClassification", "DataCollatorWithPadding", "SEQ_CLS"),
        "token": ("AutoModelForTokenClassification", "DataCollatorForTokenClassification", "TOKEN_CLS"),
    }[kind]
    base, _, bf16 = method.partition("-")
    if base not in LEARNING_RATE or bf16 not in {"", "bf16"}:
        raise ValueError(f"unknown peer method {method!r}")
    model = getattr(transformers, auto_cls).from_pretrained(str(backbone), num_labels=num_labels, use_safetensors=True)
    if base == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=task_type, r=8, lora_alpha=16, lora_dropout=0.1))
    args = peer_training_args(f"hf-{base}-", epochs, seed, learning_rate or LEARNING_RATE[base], device, bf16=bool(bf16) or None)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=getattr(transformers, collator_cls)(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return PeerRun(evaluate(trainer), seconds, len(rows) * epochs / seconds, trainable)


def hf_sequence_classification(
    backbone: Path,
    train: Any,
    evaluations: dict[str, tuple[list[str], list[str]]],
    labels: list[str],
    *,
    epochs: int,
    seed: int,
    method: str = "full",
    max_length: int = 128,
    device: str = "cpu",
    learning_rate: float | None = None,
) -> PeerRun:
    """``AutoModelForSequenceClassification`` + ``Trainer``; accuracy on each evaluation set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    index = {name: i for i, name in enumerate(labels)}

    def encode(texts: list[str], gold: list[str]) -> list[dict[str, Any]]:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "attention_mask": m, "labels": index[y]}
            for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], gold, strict=True)
        ]

    predicted: dict[str, list[str]] = {}

    def evaluate(trainer: Any) -> dict[str, float]:
        scores = {}
        for name, (texts, gold) in evaluations.items():
            predictions = trainer.predict(encode(texts, gold)).predictions.argmax(-1)
            predicted[name] = [labels[i] for i in predictions.tolist()]
            scores[name] = float((predictions == np.array([index[y] for y in gold])).mean())
        return scores

    run = {"epochs": epochs, "seed": seed, "method": method, "device": device, "learning_rate": learning_rate}
    result = _fine_tune("sequence", backbone, tokenizer, encode(train.texts, train.labels), len(labels), evaluate, **run)
    result.predictions = predicted
    return result


def hf_token_classification(
    backbone: Path,
    train: Any,
    evaluations: dict[str, tuple[list[list[str]], list[list[str]]]],
    labels: list[str],
    *,
    epochs: int,
    seed: int,
    method: str = "full",
    max_length: int = 128,
    device: str = "cpu",
    learning_rate: float | None = None,
) -> PeerRun:
    """``AutoModelForTokenClassification`` + ``Trainer`` with first-sub-word labels; seqeval entity F1 per evaluation set."""
    from seqeval.metrics import f1_score
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    index = {t: i for i, t in enumerate(labels)}

    def encode(words_list: list[list[str]], tags_list: list[list[str]]) -> list[dict[str, Any]]:
        enc = tokenizer(words_list, is_split_into_words=True, truncation=True, max_length=max_length)
        rows = []
        for i, tags in enumerate(tags_list):
            seen, label_ids = set(), []
            for w in enc.word_ids(i):
                label_ids.append(-100 if w is None or w in seen else index.get(tags[w], index["O"]))
                if w is not None:
                    seen.add(w)
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": label_ids})
        return rows

    def evaluate(trainer: Any) -> dict[str, float]:
        scores = {}
        for name, (words, tags_list) in evaluations.items():
            eval_rows = encode(words, tags_list)
            logits = trainer.predict(eval_rows).predictions
            pred = []
            for row, tags, row_scores in zip(eval_rows, tags_list, logits, strict=True):
                positions = [i for i, label in enumerate(row["labels"]) if label != -100]
                pred.append([labels[int(row_scores[p].argmax())] for p in positions] + ["O"] * (len(tags) - len(positions)))
            scores[name] = float(f1_score(tags_list, pred))
        return scores

    run = {"epochs": epochs, "seed": seed, "method": method, "device": device, "learning_rate": learning_rate}
    return _fine_tune("token", backbone, tokenizer, encode(train.texts, train.labels), len(labels), evaluate, **run)
