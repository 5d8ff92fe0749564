"""The training step: padded (graphable) batches give the eager step's loss and gradients; on a CUDA GPU, graph
replays train like eager steps (the CUDA tests are skipped without one)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from finechain.heads import head_type
from finechain.model.chain_model import ChainModel
from finechain.model.task import TaskModel
from finechain.train.features import TrunkFeatures
from finechain.train.objectives import StepInputs
from finechain.train.optim import adamw
from finechain.train.step import BatchStep, padded_width
from tests.conftest import ner_sentences, sentiment_rows

CUDA = torch.cuda.is_available()


def _setup(backbone: Path, kind: str, device: str = "cpu") -> tuple[ChainModel, TaskModel, TrunkFeatures, torch.Tensor]:
    """A model, an untrained tail of type ``kind`` and its 24 training examples' cached trunk states and targets."""
    torch.manual_seed(0)
    model = ChainModel.from_backbone(str(backbone), split=2, max_length=32).to(device)
    if kind == "tagging":
        sentences = ner_sentences(24, seed=3)
        texts, labels = [[w for w, _ in s] for s in sentences], [[t for _, t in s] for s in sentences]
        tags = sorted({t for s in labels for t in s})
    else:
        rows = sentiment_rows(24, seed=3)
        texts, labels, tags = [t + " very" * (i % 5) for i, (t, _) in enumerate(rows)], [y for _, y in rows], ["neg", "pos"]
    task = model.new_task(head_type(kind)(tags))
    ids, words = model.encode(texts, with_words=kind == "tagging")
    feats = TrunkFeatures(model.trunk, ids, 0, "memory")
    return model, task, feats, torch.from_numpy(task.head.targets(labels, words)).to(device)


def _grads(task: TaskModel) -> list[torch.Tensor]:
    return [p.grad.clone() for p in task.parameters() if p.requires_grad and p.grad is not None]


@pytest.mark.parametrize("kind", ["classification", "tagging"])
def test_a_padded_batch_gives_the_eager_loss_and_gradients(tiny_backbone: Path, kind: str) -> None:
    _, task, feats, targets = _setup(tiny_backbone, kind)
    task.eval()  # no dropout: both runs must agree
    batch = sorted(range(len(feats.lengths)), key=feats.lengths.__getitem__)[:4][::-1]  # the shortest texts, unsorted
    natural, longest = max(feats.lengths[i] for i in batch), max(feats.lengths)
    assert natural < longest
    step = BatchStep(task, feats, targets, "fp32", batch_size=len(batch), accumulation=2)
    loss = step(batch)
    eager = _grads(task)
    task.zero_grad(set_to_none=True)
    step._index.copy_(torch.tensor(batch))
    padded = step._graph_body(longest)  # what a graph records: the widest padding, device ops only
    assert padded.item() == pytest.approx(loss.item(), rel=1e-5)
    assert len(eager) == len(_grads(task)) > 0
    for want, got in zip(eager, _grads(task), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_gather_pads_with_masked_zeros_and_needs_the_memory_cache(tiny_backbone: Path, tmp_path: Path) -> None:
    model = ChainModel.from_backbone(str(tiny_backbone), split=2, max_length=32)
    ids, _ = model.encode(["good film", "the plot was awful", "bad"])
    feats = TrunkFeatures(model.trunk, ids, 0, "memory")
    hidden, mask = feats.batch([2, 1])
    wide, wide_mask = feats.gather(torch.tensor([2, 1]), width=hidden.shape[1] + 3)
    torch.testing.assert_close(wide[:, : hidden.shape[1]], hidden)
    n = hidden.shape[1]
    assert not wide[:, n:].any() and wide_mask[:, :n].equal(mask) and not wide_mask[:, n:].any()
    on_disk = TrunkFeatures(model.trunk, ids, 0, "disk", cache_file=tmp_path / "c.npy")
    with pytest.raises(ValueError, match="cache='memory'"):
        on_disk.gather(torch.tensor([0]), width=4)


def test_padded_widths_are_few() -> None:
    widths = {padded_width(n, longest=70) for n in range(1, 71)}
    assert widths == {16, 32, 48, 64, 70}


def test_on_cpu_steps_stay_eager(tiny_backbone: Path) -> None:
    _, task, feats, targets = _setup(tiny_backbone, "classification")
    step = BatchStep(task, feats, targets, "fp32", batch_size=4, graphs=True)
    assert not step.graphs
    step([0, 1, 2, 3])
    assert all(p.grad is not None for p in task.parameters() if p.requires_grad)
    step.zero_grad(adamw(task, lambda name: 1e-3, 0.0, torch.device("cpu")))
    assert all(p.grad is None for p in task.parameters())


def _train(task: TaskModel, step: BatchStep, batches: list[list[int]]) -> list[float]:
    optimizer = adamw(task, lambda name: 1e-3, 0.01, torch.device("cuda"))
    losses = []
    for batch in batches:
        losses.append(step(batch))
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        optimizer.step()
        step.zero_grad(optimizer)
    return [float(x) for x in losses]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["classification", "tagging"])
def test_cuda_graph_replays_train_like_eager_steps(tiny_backbone: Path, kind: str, precision: str) -> None:
    _, task, feats, targets = _setup(tiny_backbone, kind, "cuda")
    eager_task = copy.deepcopy(task)
    task.eval(), eager_task.eval()  # no dropout: the two must follow the same path
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] * 3 + [[12, 13]]  # widths repeat: warm-up, capture, replays
    graphed = BatchStep(task, feats, targets, precision, batch_size=4)
    eager = BatchStep(eager_task, feats, targets, precision, batch_size=4, graphs=False)
    got, want = _train(task, graphed, batches), _train(eager_task, eager, batches)
    assert graphed.graphs and graphed._captured, "graphs were turned off or never captured"
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    assert got == pytest.approx(want, rel=tolerance, abs=tolerance)
    for a, b in zip(task.parameters(), eager_task.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_dropout_draws_new_masks_at_each_replay(tiny_backbone: Path) -> None:
    _, task, feats, targets = _setup(tiny_backbone, "classification", "cuda")
    task.train()
    step = BatchStep(task, feats, targets, "bf16", batch_size=4)
    losses = [float(step([0, 1, 2, 3])) for _ in range(5)]  # no optimizer step: only dropout changes the loss
    assert step.graphs and step._captured
    assert len(set(losses[1:])) == 4, losses  # the replays (after the warm-up) each drew their own masks


class _SyncingLoss:
    """The head's loss, plus a host read of it: legal eagerly, an error inside a CUDA graph capture."""

    graph_safe = True  # claims to be, so that the step tries to capture it

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        loss = task.loss(task(inputs.states, inputs.mask), inputs.targets)
        return loss + 0.0 * float(loss)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_failed_capture_falls_back_and_training_goes_on_with_dropout(tiny_backbone: Path) -> None:
    """A capture that fails must leave eager steps working: after the failure PyTorch's CUDA generator stayed marked as
    capturing, and the next eager dropout died with "Offset increment outside graph capture" (seen on an H200)."""
    _, task, feats, targets = _setup(tiny_backbone, "classification", "cuda")
    task.train()  # dropout draws random numbers in every step
    step = BatchStep(task, feats, targets, "bf16", batch_size=4, objective=_SyncingLoss())
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        losses = _train(task, step, [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 3)
    assert not step.graphs and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_joint_training_then_refinement_captures_graphs_for_every_task(tiny_backbone: Path, tmp_path: Path) -> None:
    """Joint multi-task training followed by each task's refinement (the default for 2+ tasks) with CUDA graphs on: on
    an H200 the second task's refinement failed to capture (the joint phase kept its last batch's autograd graph alive)."""
    import warnings

    from finechain import Chain, TaskSpec, TrainingConfig
    from finechain.spec import JointConfig
    from tests.conftest import write_conll, write_csv

    specs = [
        TaskSpec(name="sent", train=write_csv(tmp_path / "s.csv", sentiment_rows(96, 1))),
        TaskSpec(name="ner", type="tagging", train=write_conll(tmp_path / "n.conll", ner_sentences(96, 1))),
        TaskSpec(name="sent2", train=write_csv(tmp_path / "s2.csv", sentiment_rows(96, 2))),
    ]
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32, sharing="joint").to("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns: make it fail the test
        results = chain.fit_joint(specs, TrainingConfig(epochs=2, batch_size=8, min_steps=0), JointConfig(epochs=2), progress=False)
    assert set(results) == {"sent", "ner", "sent2"}
