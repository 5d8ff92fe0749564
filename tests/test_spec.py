"""The spec models and their documentation stay in step."""

from __future__ import annotations

from pathlib import Path

from finechain.spec import BranchConfig, ChainSpec, JointConfig, TaskSpec, TrainingConfig, TrainingOverrides

DOC = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text()


def test_every_spec_field_is_documented() -> None:
    for model in (ChainSpec, TaskSpec, TrainingConfig, BranchConfig, JointConfig):
        for field in model.model_fields:
            assert f"| `{field}` |" in DOC, f"{model.__name__}.{field} missing from docs/spec.md"


def test_overrides_cover_every_training_field() -> None:
    assert set(TrainingOverrides.model_fields) == set(TrainingConfig.model_fields)
    merged = TrainingOverrides(epochs=9).apply(TrainingConfig(batch_size=8))
    assert (merged.epochs, merged.batch_size) == (9, 8)
