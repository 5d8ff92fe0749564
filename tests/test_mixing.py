"""Layer mixing: a head reading a learned mix of every layer, cached trunk states, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.model.mixing import LayerMix

FAST = TrainingConfig(epochs=8, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0)
TEXTS = ["very good music", "weak ending and poor plot", "the movie", "superb story"]


def test_layer_mix_weights_are_a_softmax_and_check_their_count() -> None:
    mix = LayerMix(3)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.0, 0.0, 10.0]))
    states = [torch.full((2, 4), float(i)) for i in range(3)]
    assert torch.allclose(mix(states), torch.full((2, 4), 2.0), atol=1e-3)
    assert sum(mix.layer_weights()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="built for 3 layers"):
        mix(states[:2])


@pytest.mark.parametrize("cache", ["memory", "disk", "off"])
def test_mixing_task_trains_on_every_cache_and_reloads(
    tiny_backbone: Path, sentiment_files: tuple[Path, Path], tmp_path: Path, cache: str
) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1], layer_mix=True)
    result = chain.fit(spec, FAST.model_copy(update={"cache": cache}), progress=False, run_dir=tmp_path / "run")
    assert result.validation["accuracy"] >= 0.9
    weights = chain.tasks["s"].layer_mix.layer_weights()
    assert len(weights) == 5 and weights != [0.2] * 5  # embeddings + 4 layers, moved away from the plain average
    before = chain.predict(TEXTS)
    loaded = Chain.from_pretrained(chain.save_pretrained(tmp_path / "chain"))
    assert loaded.predict(TEXTS) == before
    assert loaded.tasks["s"].needs_trunk_states


def test_mixing_and_plain_tasks_share_one_pass(tiny_backbone: Path, sentiment_files: tuple[Path, Path]) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=4, max_length=32)  # a probe: no branch layers at all
    chain.fit(TaskSpec(name="mixed", train=sentiment_files[0], dev=sentiment_files[1], layer_mix=True), FAST, progress=False)
    chain.fit(TaskSpec(name="plain", train=sentiment_files[0], dev=sentiment_files[1]), FAST, progress=False)
    together = chain.predict(TEXTS)
    assert [row["mixed"] for row in together] == [row["mixed"] for row in chain.predict(TEXTS, tasks=["mixed"])]
    assert [row["plain"] for row in together] == [row["plain"] for row in chain.predict(TEXTS, tasks=["plain"])]
