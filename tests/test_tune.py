"""`finechain tune`: an Optuna search over a spec's settings on validation data, the best written out as a spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finechain.errors import FinechainError
from finechain.jobs import tuning
from finechain.jobs.tuning import TrialRecord, best_trial, parse_budget, tune_spec
from finechain.spec import load_chain_spec
from tests.conftest import TOPICS, sentiment_rows, write_csv
from tests.test_cli import cli


def _spec(folder: Path, backbone: Path, extra: str = "", task: str = "") -> Path:
    (folder / "data").mkdir(exist_ok=True)
    write_csv(folder / "data" / "train.csv", sentiment_rows(120, 1))
    write_csv(folder / "data" / "test.csv", sentiment_rows(30, 3))
    spec = folder / "chain.yaml"
    spec.write_text(
        f"backbone: {backbone}\nmax_length: 32\n{extra}"
        "training: {min_steps: 0, head_learning_rate: 0.01, epochs: 2}\n"
        f"tasks:\n  - {{name: sentiment, train: data/train.csv, test: data/test.csv{task}}}\n"
    )
    return spec


def test_tune_searches_on_validation_prunes_and_writes_a_trainable_spec(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path, tiny_backbone, task=", training: {batch_size: 16}")
    trunks: list[int] = []
    real_get = tuning.FeatureCache.get

    def counting_get(self, trunk, ids, **kwargs):  # the trunk states each trial reads: computed once per trunk depth
        found = len(self)
        features = real_get(self, trunk, ids, **kwargs)
        if len(self) > found:
            trunks.append(trunk.split)
        return features

    monkeypatch.setattr(tuning.FeatureCache, "get", counting_get)
    seen = []
    result = tune_spec(spec, trials=6, out=tmp_path / "out" / "best.yaml", seed=3, on_trial=seen.append)
    assert len(result.trials) == len(seen) == 6
    states = {r.state for r in result.trials}
    assert "complete" in states and states <= {"complete", "pruned", "failed"}
    # every complete trial's value is its validation accuracy; the best is the highest
    complete = [r for r in result.trials if r.state == "complete"]
    assert all(r.value == pytest.approx(r.scores["sentiment"]) for r in complete)
    assert result.best.value == max(r.value for r in complete)
    # the split is searched (auto in the spec); batch_size and epochs are written in the spec: kept, never searched
    assert all("split" in r.params and not {"batch_size", "epochs"} & set(r.params) for r in result.trials)
    splits = {r.params["split"] for r in result.trials}
    assert sorted(trunks) == sorted(s for s in splits for _ in range(2))  # train + validation states, once per depth
    # the tuned spec: the best settings, data paths still pointing at the data, test never used for selection
    tuned = load_chain_spec(result.spec_path)
    task = tuned.tasks[0]
    assert tuned.split == result.best.params["split"]
    assert task.training.batch_size == 16 and task.training.learning_rate == pytest.approx(result.best.params["learning_rate"])
    assert task.branch.mode == result.best.params["branch"]
    assert task.train == (tmp_path / "data" / "train.csv").resolve() or task.train.resolve() == (tmp_path / "data" / "train.csv").resolve()
    assert result.spec_path.read_text().startswith("# tuned by `finechain tune`: trial")
    trials = json.loads(result.trials_path.read_text())
    assert trials["metrics"] == {"sentiment": "accuracy"} and len(trials["trials"]) == 6
    assert "test" not in json.dumps(trials["trials"])


def test_pruning_stops_a_trial_behind_the_median(tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's pruner decides; the hook must stop the run and the trial must be recorded as pruned."""
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    spec = _spec(tmp_path, tiny_backbone, extra="split: 2\n")
    result = tune_spec(spec, trials=3, seed=1)
    assert [r.state for r in result.trials] == ["complete", "pruned", "complete"]
    assert all("split" not in r.params for r in result.trials)  # written in the spec: kept


def test_tune_cli_prints_the_trials_and_refuses_bad_budgets(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, tiny_backbone, extra="split: 3\n", task=", branch: {mode: full}, training: {epochs: 1}")
    code, out, err = cli(["tune", str(spec), "--trials", "2", "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert "2 trials; best: trial" in out and "sentiment accuracy" in out
    written = tmp_path / "chain.tuned.yaml"
    assert written.is_file() and yaml.safe_load(written.read_text())["tasks"][0]["branch"] == {"mode": "full"}
    assert err.count("trial ") >= 2
    code, _, err = cli(["tune", str(spec), "--budget", "soon"], monkeypatch, capsys)
    assert code == 2 and "--budget" in err and "15m" in err and "Traceback" not in err
    code, _, err = cli(["tune", str(spec), "--out", str(spec)], monkeypatch, capsys)
    assert code == 2 and "another file" in err


def test_a_frozen_multi_task_spec_searches_each_task_under_its_name(tiny_backbone: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "topic.csv", [(f"{w} {w}", topic) for topic, words in TOPICS.items() for w in words for _ in range(8)])
    spec = _spec(tmp_path, tiny_backbone, extra="split: 3\nsharing: frozen\n")
    spec.write_text(spec.read_text() + "  - {name: topic, train: topic.csv, training: {learning_rate: 0.001}}\n")
    result = tune_spec(spec, trials=2, seed=5)
    params = result.trials[0].params
    assert {"sentiment.learning_rate", "topic.branch", "topic.pooling"} <= set(params) and "topic.learning_rate" not in params
    assert set(result.best.scores) == {"sentiment", "topic"}
    assert result.best.value == pytest.approx(sum(result.best.scores.values()) / 2)
    tuned = load_chain_spec(result.spec_path)
    sentiment, topic = tuned.tasks
    assert sentiment.training.learning_rate == pytest.approx(result.best.params["sentiment.learning_rate"])
    assert topic.training.learning_rate == 0.001 and topic.head.pooling == result.best.params["topic.pooling"]


def test_a_regression_task_counts_in_the_trials_mean_without_its_unit(tiny_backbone: Path, tmp_path: Path) -> None:
    """A trial's value is the mean of its tasks' comparable scores: a regression's RMSE in dollars enters as 1 - RMSE /
    std of its training labels, not as minus thousands that would drown the classifier's accuracy."""
    import numpy as np

    prices = [(text, 1000.0 * (label == "pos") + 10.0 * len(text.split())) for text, label in sentiment_rows(120, 4)]
    write_csv(tmp_path / "price.csv", prices)
    spec = _spec(tmp_path, tiny_backbone, extra="split: 3\nsharing: frozen\n")
    spec.write_text(spec.read_text() + "  - {name: price, type: regression, train: price.csv}\n")
    result = tune_spec(spec, trials=2, seed=5)
    spread = float(np.std([price for _, price in prices]))
    complete = [r for r in result.trials if r.state == "complete"]
    assert complete and all(r.scores["price"] > 1 for r in complete)  # an RMSE in the label's unit
    for r in complete:
        assert r.value == pytest.approx((r.scores["sentiment"] + 1 - r.scores["price"] / spread) / 2)


def test_a_jointly_trained_spec_is_refused_with_the_fix(tiny_backbone: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_backbone, extra="sharing: joint\n")
    with pytest.raises(FinechainError, match="sharing: frozen"):
        tune_spec(spec, trials=1)


def test_parse_budget() -> None:
    assert parse_budget("2h") == 7200 and parse_budget("45s") == 45
    with pytest.raises(FinechainError, match="90s, 15m or 2h"):
        parse_budget("-3m")


def test_tune_auto_in_the_spec_searches_then_trains_the_best(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    spec = _spec(tmp_path, tiny_backbone, extra="tune: {trials: 2, budget: null}\n")
    assert load_chain_spec(spec).tune is not None
    code, out, err = cli(["train", str(spec), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    tuned = yaml.safe_load((tmp_path / "chain.tuned.yaml").read_text())
    assert "tune" not in tuned and "split" in tuned  # the search's choice, trained as written
    manifest = json.loads((tmp_path / "chain" / "finechain.json").read_text())
    assert manifest["split"] == tuned["split"] and "sentiment" in out
    auto = tmp_path / "auto.yaml"
    auto.write_text(spec.read_text().replace("tune: {trials: 2, budget: null}", "tune: auto"))
    assert load_chain_spec(auto).tune.model_dump() == {"trials": 12, "budget": "15m"}
    auto.write_text(spec.read_text().replace("budget: null", "budget: soon"))
    code, _, err = cli(["train", str(auto), "--out", str(tmp_path / "x")], monkeypatch, capsys)
    assert code != 0 and "auto.yaml:3" in err and "budget" in err and "Traceback" not in err


def test_the_searched_depths_reach_down_to_the_specs_own_default() -> None:
    """One tagging task's ``split: auto`` is 0 (every layer tuned), so the search tries 0 too; a sentence task's
    search starts at 1 as before."""
    import optuna

    from finechain.spec import ChainSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for kind, lowest in (("tagging", 0), ("classification", 1)):
        data = {"tasks": [{"name": "t", "type": kind, "train": "t.csv"}]}
        trial = optuna.create_study().ask()
        tuning._suggest(trial, ChainSpec.model_validate(data), data, layers=6)
        assert (trial.distributions["split"].low, trial.distributions["split"].high) == (lowest, 5), kind


def test_the_tuned_spec_of_a_tagging_task_alone_keeps_the_rates_its_trials_trained_at(tmp_path: Path) -> None:
    """Once the best trial's split is written, the spec is no longer `split: auto` and would lose a tagging task's own
    rates (ChainSpec fills them only then): the written spec keeps the ones the trials used, unless the file set them."""
    import yaml

    from finechain.spec import ChainSpec

    for chain_training, head_rate in (({}, 3e-3), ({"head_learning_rate": 1e-3}, None)):
        data = {"training": chain_training, "tasks": [{"name": "t", "type": "tagging", "train": "t.conll"}]}
        best = tuning.TrialRecord(0, "complete", {"split": 1, "learning_rate": 3e-4, "epochs": 4, "batch_size": 16}, 0.8)
        written = yaml.safe_load(tuning._tuned_yaml(ChainSpec.model_validate(data), data, best, tmp_path, tmp_path))
        assert written["split"] == 1
        assert written["tasks"][0]["training"].get("head_learning_rate") == head_rate
        assert written["tasks"][0]["training"]["learning_rate"] == 3e-4  # the trial's own
        reread = ChainSpec.model_validate(written)  # trains as the best trial did
        assert reread.tasks[0].training.apply(reread.training).head_learning_rate == (head_rate or 1e-3)


def test_of_trials_tied_on_validation_the_quickest_is_the_best() -> None:
    """On 40 validation examples three of four trials scored 0.725; the first was kept, not the cheaper ones."""
    trials = [
        TrialRecord(0, "complete", {"split": 4}, 0.725, seconds=94),
        TrialRecord(1, "complete", {"split": 2}, 0.700, seconds=393),
        TrialRecord(2, "complete", {"split": 3}, 0.725, seconds=82),
        TrialRecord(3, "complete", {"split": 4}, 0.75, seconds=300),
    ]
    assert best_trial(trials).number == 3  # a better score wins whatever it cost
    assert best_trial(trials[:3]).number == 2
    assert best_trial([TrialRecord(0, "complete", {}, None, seconds=1), trials[1]]).number == 1
