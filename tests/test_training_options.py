"""Training options on the one loop: staged training (head first), layer-wise learning-rate decay, and adversarial
training (FGM / PGD on the trunk states a tail reads)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.augment import TagPool, augment, eda, synonyms, tagged_eda
from finechain.data.words import split_words
from finechain.heads.classification import ClassificationHead
from finechain.heads.tagging import spans_from_tags
from finechain.spec import ChainSpec
from finechain.train.loop import Hook, TrainingLoop
from finechain.train.objectives import Adversarial, HeadLoss, StepInputs
from tests.conftest import ner_sentences, sentiment_rows

ROWS = sentiment_rows(96, 5)
TEXTS, LABELS = [t for t, _ in ROWS], [y for _, y in ROWS]


def _chain(backbone: Path) -> Chain:
    return Chain.from_backbone(str(backbone), split=2, max_length=32)


class Snapshots(Hook):
    """The branch and head weights at the start and after each epoch, and the optimizer's base rates."""

    def __init__(self) -> None:
        self.branch: list[torch.Tensor] = []
        self.head: list[torch.Tensor] = []
        self.rates: set[float] = set()

    def _take(self, loop: TrainingLoop) -> None:
        self.branch.append(torch.cat([p.detach().flatten() for p in loop.module.branch.parameters()]).clone())
        self.head.append(loop.module.head_layer.out.weight.detach().clone())

    def on_start(self, loop: TrainingLoop) -> None:
        self._take(loop)
        self.rates = {round(group["initial_lr"], 10) for group in loop.optimizer.param_groups}

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        self._take(loop)


def test_head_first_trains_only_the_head_then_everything(tiny_backbone: Path) -> None:
    chain, seen = _chain(tiny_backbone), Snapshots()
    training = TrainingConfig(epochs=3, min_steps=0, patience=0, head_epochs=1, seed=2)
    chain.fit(TaskSpec(name="s"), training, texts=TEXTS, labels=LABELS, hooks=[seen], progress=False)
    assert torch.equal(seen.branch[0], seen.branch[1])  # epoch 1: the branch frozen
    assert not torch.equal(seen.head[0], seen.head[1])  # ... the head trained
    assert not torch.equal(seen.branch[1], seen.branch[2])  # epoch 2: the branch trains
    assert all(p.requires_grad for p in chain.tasks["s"].branch.parameters())  # released after the run


def test_layer_decay_gives_lower_layers_lower_rates(tiny_backbone: Path) -> None:
    chain, seen = _chain(tiny_backbone), Snapshots()
    training = TrainingConfig(epochs=1, min_steps=0, learning_rate=1e-4, head_learning_rate=1e-3, layer_decay=0.5)
    chain.fit(TaskSpec(name="s"), training, texts=TEXTS, labels=LABELS, hooks=[seen], progress=False)
    assert seen.rates == {1e-3, 1e-4, 5e-5}  # head; top branch layer; the one under it (2 branch layers)
    lora, seen = _chain(tiny_backbone), Snapshots()
    lora.fit(TaskSpec(name="s", branch={"mode": "lora"}), training, texts=TEXTS, labels=LABELS, hooks=[seen], progress=False)
    assert seen.rates == {1e-3, 1e-4, 5e-5}  # adapters of each layer too


def test_adversarial_push_has_the_asked_size_and_raises_the_loss(tiny_backbone: Path) -> None:
    torch.manual_seed(0)
    chain = _chain(tiny_backbone)
    head = ClassificationHead(options={"dropout": 0.0})
    head.initialize(LABELS)
    task = chain.model.new_task(head).eval()
    ids, mask = torch.randint(5, 40, (6, 7)), torch.ones(6, 7, dtype=torch.long)
    mask[0, 4:] = 0
    states = chain.model.trunk(ids, mask).detach()
    inputs = StepInputs(states, mask, torch.tensor([0, 1, 0, 1, 0, 1]), torch.arange(6))
    clean = HeadLoss().loss(task, inputs)
    norms = states.flatten(1).norm(dim=1)
    fgm = Adversarial(HeadLoss(), epsilon=0.1, steps=1)
    delta = fgm.perturbation(task, inputs)
    assert delta.flatten(1).norm(dim=1) == pytest.approx(0.1 * norms, rel=1e-4)
    assert torch.all(delta[0, 4:] == 0)  # padding gets no push
    assert HeadLoss().loss(task, fgm.moved(inputs, delta)) > clean
    pgd = Adversarial(HeadLoss(), epsilon=0.1, steps=4)
    pushed = pgd.perturbation(task, inputs)
    assert torch.all(pushed.flatten(1).norm(dim=1) <= 0.1 * norms * (1 + 1e-4))
    assert HeadLoss().loss(task, pgd.moved(inputs, pushed)) >= HeadLoss().loss(task, fgm.moved(inputs, delta)) - 1e-4
    expected = float((clean + HeadLoss().loss(task, fgm.moved(inputs, delta))).detach())
    assert float(fgm.loss(task, inputs).detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversarial_training_runs_in_the_loop(kind: str, tiny_backbone: Path) -> None:
    chain = _chain(tiny_backbone)
    training = TrainingConfig(epochs=2, min_steps=0, adversarial=kind, adversarial_steps=2, seed=3)
    result = chain.fit(TaskSpec(name="s"), training, texts=TEXTS, labels=LABELS, progress=False)
    assert result.training is not None and result.training.adversarial == kind
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("adversarial", "fgsm", "'none', 'fgm' or 'pgd'"),
        ("adversarial_epsilon", 0, "greater than 0"),
        ("layer_decay", 1.5, "less than or equal to 1"),
        ("head_epochs", -1, "greater than or equal to 0"),
        ("adversarial_steps", 0, "greater than or equal to 1"),
        ("ema_decay", 1, "less than 1"),
        ("ema_decay", 0, "greater than 0"),
    ],
)
def test_bad_training_options_say_what_is_allowed(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainingConfig.model_validate({field: value})
    with pytest.raises(ValidationError, match=message):  # per-task overrides are checked the same way
        TaskSpec.model_validate({"name": "t", "training": {field: value}})


def test_eda_copies_are_seeded_keep_their_labels_and_never_use_antonyms() -> None:
    texts = ["the film was great and the story very funny", "shares of the company fell", "ok"]
    first = augment(texts, ["pos", "neg", "pos"], copies=3, rate=0.2, seed=5)
    assert first == augment(texts, ["pos", "neg", "pos"], copies=3, rate=0.2, seed=5)
    out, labels, sources = first
    assert out[:3] == texts and sources[:3] == [0, 1, 2] and len(out) > 3 and all(t.strip() for t in out)
    assert 2 not in sources[3:]  # "ok" has no word with a synonym, and one word cannot be swapped: no copy
    for text, label, source in zip(out, labels, sources, strict=True):
        assert label == ["pos", "neg", "pos"][source]
        assert abs(len(text.split()) - len(texts[source].split())) <= 3  # a few words changed, not rewritten
    lexicon = synonyms()
    for a, b in [("good", "bad"), ("great", "awful"), ("rise", "fall"), ("increase", "decrease"), ("win", "loss"), ("new", "old")]:
        assert b not in lexicon.get(a, ()), (a, b)
    rng = random.Random(0)
    assert all(eda("word", rng) for _ in range(20))  # a one-word text is never emptied


def test_augment_adds_copies_to_training_only(tiny_backbone: Path) -> None:
    chain, seen = _chain(tiny_backbone), Snapshots()
    training = TrainingConfig(epochs=1, min_steps=0, augment=2, evaluations_per_epoch=1)
    result = chain.fit(TaskSpec(name="s"), training, texts=TEXTS, labels=LABELS, hooks=[seen], progress=False)
    assert chain.records["s"].data["augmented"] == {"copies": 2, "rate": 0.1}
    plain = _chain(tiny_backbone).fit(
        TaskSpec(name="s"), training.model_copy(update={"augment": 0}), texts=TEXTS, labels=LABELS, progress=False
    )
    assert result.history[-1]["step"] > 2 * plain.history[-1]["step"]  # about three times the training examples
    assert result.validation["n"] == plain.validation["n"]  # validation untouched


NER = ner_sentences(60, 3)
NER_WORDS, NER_TAGS = [[w for w, _ in s] for s in NER], [[t for _, t in s] for s in NER]


def _entities(words: list[str], tags: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [(kind, tuple(words[a : b + 1])) for kind, a, b in spans_from_tags(tags)]


@pytest.mark.parametrize("operation", ["mention", "token", "synonym", "shuffle"])
def test_each_tagged_operation_keeps_every_tag_with_its_words(operation: str) -> None:
    pool, rng, changed = TagPool.of(NER_WORDS, NER_TAGS), random.Random(4), 0
    seen = {(kind, words) for w, t in zip(NER_WORDS, NER_TAGS, strict=True) for kind, words in _entities(w, t)}
    for words, tags in zip(NER_WORDS, NER_TAGS, strict=True):
        new_words, new_tags = tagged_eda(words, tags, rng, 0.3, pool, operation=operation)
        assert len(new_words) == len(new_tags) and set(new_tags) <= set(tags) | {"I-LOC"}
        changed += new_words != words
        before, after = _entities(words, tags), _entities(new_words, new_tags)
        assert [k for k, _ in after] == [k for k, _ in before]  # the same entities, in order, of the same types
        if operation == "mention":  # each entity is one the training data has, at least one of them another
            assert set(after) <= seen and after != before
            outside = [[w for w, t in zip(a, b, strict=True) if t == "O"] for a, b in ((words, tags), (new_words, new_tags))]
            assert outside[0] == outside[1]
        elif operation == "token":  # a word only ever becomes a word the data has with the same tag
            assert new_tags == tags
            assert all(b in pool.words[t] for a, b, t in zip(words, new_words, tags, strict=True) if a != b)
        elif operation == "synonym":  # entities untouched; words outside them become lexicon synonyms
            assert after == before
        else:  # each stretch keeps its words, in another order
            assert new_tags == tags and sorted(new_words) == sorted(words)
            assert [sorted(w) for _, w in after] == [sorted(w) for _, w in before]
    assert changed >= 8  # (the toy data has few stretches of two words or more to shuffle)
    with pytest.raises(ValueError, match="unknown operation 'swap'; use one of mention, token"):
        tagged_eda(NER_WORDS[0], NER_TAGS[0], rng, 0.3, pool, operation="swap")


def test_tagged_copies_are_seeded_name_their_source_and_stay_raw_text_when_given_raw_text() -> None:
    first = augment(NER_WORDS, NER_TAGS, copies=2, rate=0.2, seed=5, per_word=True)
    assert first == augment(NER_WORDS, NER_TAGS, copies=2, rate=0.2, seed=5, per_word=True)
    words, tags, sources = first
    assert words[:60] == NER_WORDS and len(words) > 100 and len(words) == len(tags) == len(sources)
    for new_words, new_tags, source in zip(words[60:], tags[60:], sources[60:], strict=True):
        assert new_words != NER_WORDS[source] and len(new_words) == len(new_tags)
        assert [k for k, _ in _entities(new_words, new_tags)] == [k for k, _ in _entities(NER_WORDS[source], NER_TAGS[source])]
    raw = [" ".join(w) for w in NER_WORDS]
    texts, raw_tags, _ = augment(raw, NER_TAGS, copies=2, rate=0.2, seed=5, per_word=True)
    assert len(texts) > 100 and all(isinstance(t, str) for t in texts)
    assert all(len(split_words(t)) == len(tags) for t, tags in zip(texts, raw_tags, strict=True))


def test_augment_applies_to_word_level_labels_too(tiny_backbone: Path) -> None:
    tasks = [{"name": "topic", "train": "t.csv"}, {"name": "ner", "type": "tagging", "train": "n.conll"}]
    assert ChainSpec.model_validate({"training": {"augment": 1}, "tasks": tasks}).training.augment == 1
    training = TrainingConfig(epochs=1, min_steps=0, augment=2, evaluations_per_epoch=1, batch_size=8)
    chain = _chain(tiny_backbone)
    result = chain.fit(TaskSpec(name="ner", type="tagging"), training, texts=NER_WORDS, labels=NER_TAGS, progress=False)
    assert chain.records["ner"].data["augmented"] == {"copies": 2, "rate": 0.1}
    plain = _chain(tiny_backbone).fit(
        TaskSpec(name="ner", type="tagging"), training.model_copy(update={"augment": 0}), texts=NER_WORDS, labels=NER_TAGS, progress=False
    )
    assert result.history[-1]["step"] > 2 * plain.history[-1]["step"]  # about three times the training sentences
    assert result.validation["n"] == plain.validation["n"]  # validation untouched
