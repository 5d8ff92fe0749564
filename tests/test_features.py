"""The trunk-state cache: every batch equals the trunk run on each text alone, whatever the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finechain.model.chain_model import ChainModel
from finechain.train.features import FeatureCache, TrunkFeatures


@pytest.mark.parametrize("cache", ["memory", "disk", "off"])
@pytest.mark.parametrize("all_states", [False, True])
def test_batches_match_the_trunk_on_each_text(tiny_backbone: Path, tmp_path: Path, cache: str, all_states: bool) -> None:
    model = ChainModel.from_backbone(str(tiny_backbone), split=2, max_length=32)
    texts = ["good film", "the plot was really awful and the acting weak", "bad", "very good music and a great ending"]
    ids, _ = model.encode(texts)
    feats = TrunkFeatures(model.trunk, ids, 0, cache, batch_size=3, cache_file=tmp_path / "c.npy", all_states=all_states)
    order = [2, 0, 3]  # not the cache's fill order
    hidden, mask = feats.batch(order)
    states = hidden if all_states else [hidden]
    assert mask.tolist() == [[1] * len(ids[i]) + [0] * (max(len(ids[j]) for j in order) - len(ids[i])) for i in order]
    for row, index in enumerate(order):
        n = len(ids[index])
        with torch.inference_mode():
            alone = model.trunk.all_states(torch.tensor([ids[index]]), torch.ones(1, n, dtype=torch.long))
        expected = alone if all_states else alone[-1:]
        assert len(states) == len(expected)
        for got, want in zip(states, expected, strict=True):
            torch.testing.assert_close(got[row, :n], want[0], atol=1e-5, rtol=1e-4)
            if cache != "off":  # cached rows are zero beyond their length
                assert not got[row, n:].any()


def test_the_trunk_runs_at_the_training_precision(tiny_backbone: Path) -> None:
    """bf16 training caches the states a bf16 chain computes when it predicts (train on what is served)."""
    model = ChainModel.from_backbone(str(tiny_backbone), split=2, max_length=32)
    ids, _ = model.encode(["the plot was really awful and the acting weak"])
    cached, _ = TrunkFeatures(model.trunk, ids, 0, "memory", precision="bf16").batch([0])
    exact, _ = TrunkFeatures(model.trunk, ids, 0, "memory", precision="fp32").batch([0])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        served = model.trunk(torch.tensor(ids), torch.ones(1, len(ids[0]), dtype=torch.long)).float()
    torch.testing.assert_close(cached, served, atol=0, rtol=0)
    assert not torch.equal(cached, exact)


def test_feature_cache_shares_states_between_runs_until_the_trunk_changes(tiny_backbone: Path) -> None:
    model = ChainModel.from_backbone(str(tiny_backbone), split=2, max_length=32)
    ids, _ = model.encode(["good film", "bad plot"])
    cache = FeatureCache()
    first = cache.get(model.trunk, ids, 0)
    assert cache.get(model.trunk, [list(x) for x in ids], 0) is first  # same texts (an equal copy): computed once
    assert cache.get(model.trunk, ids, 0, all_states=True) is not first  # other states kept: another entry
    assert cache.get(model.trunk, ids[:1], 0) is not first  # other texts
    with torch.no_grad():
        next(model.trunk.stack.parameters()).add_(1.0)  # the trunk tuned in place: its states are stale
    assert cache.get(model.trunk, ids, 0) is not first
    assert cache.get(model.trunk, ids, 0, cache="off") not in (first,) and len(cache) == 4  # only memory caches are kept
    cache.clear()
    assert len(cache) == 0
