"""The spec models and their documentation stay in step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finechain.branches import BRANCH_MODES
from finechain.heads import HEADS
from finechain.spec import ChainSpec, JointConfig, TaskSpec, TrainingConfig, TrainingOverrides

DOC = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text()


def test_every_spec_field_is_documented() -> None:
    components = [HEADS.get(name).Options for name in HEADS] + [BRANCH_MODES.get(name).Options for name in BRANCH_MODES]
    for model in (ChainSpec, TaskSpec, TrainingConfig, JointConfig, *components):
        for field in model.model_fields:
            assert f"| `{field}` |" in DOC, f"{model.__name__}.{field} missing from docs/spec.md"


def test_overrides_cover_every_training_field() -> None:
    assert set(TrainingOverrides.model_fields) == set(TrainingConfig.model_fields)
    merged = TrainingOverrides(epochs=9).apply(TrainingConfig(batch_size=8))
    assert (merged.epochs, merged.batch_size) == (9, 8)


def test_reading_a_spec_imports_no_model_stack(tmp_path: Path) -> None:
    """A process that only reads specs (a linter, a CI check, a server's config) pays for pydantic and YAML, not for
    PyTorch and transformers."""
    spec = tmp_path / "chain.yaml"
    spec.write_text("tasks:\n  - {name: ner, type: tagging, train: ner.conll, decoding: argmax, branch: {mode: lora}}\n")
    code = (
        "import sys; from finechain.spec import load_chain_spec; "
        f"s = load_chain_spec({str(spec)!r}); assert s.tasks[0].head.decoding == 'argmax'; "
        "loaded = sorted(m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules); print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"type": "tagging", "decoding": "argmax"}, None),
        ({"type": "tagging", "head": {"decoding": "argmax"}}, None),
        ({"type": "classification", "decoding": "argmax"}, "extra_forbidden"),
        ({"type": "tagging", "pooling": "cls"}, "extra_forbidden"),
        ({"type": "tagging", "decoding": "argmax", "head": {"decoding": "constrained"}}, "set twice"),
        ({"type": "tagging", "head": {"crf": True}}, None),
        ({"type": "tagging", "head": {"crf": True, "decoding": "argmax"}}, "a CRF decodes whole tag sequences"),
        ({"type": "multilabel", "label_separator": ";"}, None),
        ({"branch": {"mode": "lora", "rank": 0}}, "greater than or equal to 1"),
        ({"branch": {"mode": "full", "rank": 4}}, "extra_forbidden"),
        ({"metric": "rmse"}, "not reported for classification"),
        ({"training": {"learning_rate": float("inf")}}, "finite number"),
        ({"training": {"schedule": "step"}}, "unknown schedule 'step'"),
        ({"name": "a.b"}, "pattern"),
    ],
)
def test_head_and_branch_options_are_validated_by_their_component(task: dict, message: str | None) -> None:
    from pydantic import ValidationError

    data = {"name": "t", "train": "t.csv", **task}
    if message is None:
        spec = TaskSpec.model_validate(data)
        assert spec.head == HEADS.get(spec.type).Options.model_validate(task.get("head") or {k: v for k, v in task.items() if k != "type"})
        assert TaskSpec.model_validate(spec.model_dump(mode="json")) == spec  # the nested form round-trips
        return
    with pytest.raises(ValidationError) as error:
        TaskSpec.model_validate(data)
    first = error.value.errors()[0]
    assert message in first["type"] or message in first["msg"]


def test_one_tagging_task_alone_tunes_every_layer_at_its_own_rates_unless_the_spec_says() -> None:
    def tagging(**task: Any) -> dict[str, Any]:
        return {"name": "ner", "type": "tagging", "train": "ner.conll", **task}

    alone = ChainSpec(tasks=[tagging()])
    assert alone.trunk_depth(6) == 0
    assert (alone.tasks[0].training.learning_rate, alone.tasks[0].training.head_learning_rate) == (2e-4, 3e-3)
    chain_set = ChainSpec(training={"head_learning_rate": 1e-3}, tasks=[tagging()])  # the spec's own value wins, per field
    used = chain_set.tasks[0].training.apply(chain_set.training)
    assert (used.learning_rate, used.head_learning_rate) == (2e-4, 1e-3)
    task_set = ChainSpec(tasks=[tagging(training={"learning_rate": 5e-5})])
    assert task_set.tasks[0].training.learning_rate == 5e-5
    for other in (
        ChainSpec(split=2, tasks=[tagging()]),  # not the whole encoder: the usual rates
        ChainSpec(tasks=[tagging(branch={"mode": "lora"})]),  # adapters keep their own rate
        ChainSpec(tasks=[tagging(), {"name": "s", "train": "s.csv"}]),  # not alone
        ChainSpec(tasks=[{"name": "s", "train": "s.csv"}]),  # a sentence task alone trains as in a chain
    ):
        assert other.tasks[0].training.learning_rate is None and other.tasks[0].training.head_learning_rate is None
    assert ChainSpec(tasks=[tagging(branch={"mode": "lora"})]).trunk_depth(6) == 0
