"""Integration: the real all-MiniLM-L6-v2 backbone on slices of the shared datasets, the demo, a benchmark smoke run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples
from finechain.heads import head_type
from finechain.spec import load_chain_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_real_backbone_learns_sst2_slice(shared_datasets: Path, tmp_path: Path) -> None:
    chain = Chain.from_backbone("all-MiniLM-L6-v2")
    assert (chain.split, chain.num_layers, chain.model.backbone.kind) == (2, 6, "package")
    spec = TaskSpec(name="sst2", train=shared_datasets / "sst2/train.csv", max_train_examples=1500)
    chain.fit(spec, TrainingConfig(epochs=3, min_steps=0), progress=False)  # one pass per epoch: a quick check
    dev = read_examples(shared_datasets / "sst2/dev.csv")[:300]
    accuracy = chain.score("sst2", [e.text for e in dev], [str(e.label) for e in dev])["accuracy"]
    assert accuracy > 0.78
    loaded = Chain.from_pretrained(chain.save_pretrained(tmp_path / "c"))
    assert loaded.predict(["a gorgeous, witty film"]) == chain.predict(["a gorgeous, witty film"])


def test_bundled_demo_data_is_valid_and_attributed() -> None:
    spec = load_chain_spec(ROOT / "src/finechain/demo/demo.yaml")
    assert [t.name for t in spec.tasks] == ["intent", "sentiment", "entities"]
    for task in spec.tasks:
        data = load_task_data(task, head_type(task.type), seed=13)
        assert data.test is not None and len(data.train) >= 400
    attribution = (ROOT / "src/finechain/demo/data/ATTRIBUTION.md").read_text()
    assert "BANKING77" in attribution and "SST-2" in attribution and "CoNLL-2003" in attribution


def test_demo_command_trains_and_queries(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "finechain", "demo", "--out", str(tmp_path / "demo"), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,  # 6 minutes on 2 cores; 10 in CI, where each test worker keeps to one core
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "demo" / "finechain.json").read_text())
    assert manifest["tasks"]["intent"]["metrics"]["test"]["accuracy"] > 0.85
    assert manifest["tasks"]["sentiment"]["metrics"]["test"]["accuracy"] > 0.7
    assert manifest["tasks"]["entities"]["metrics"]["test"]["entity_f1"] > 0.5
    assert "card_arrival" in done.stdout and "example predictions" in done.stdout


def run_benchmark(results: Path, datasets: Path, *args: str, timeout: int = 900, backbone: Path | None = None) -> str:
    """Run ``python -m benchmarks ARGS`` with results and the docs page redirected into ``results`` (and the suite's
    backbone replaced by ``backbone``: the narrow random one of a smoke run, see ``make_smoke_backbone``)."""
    env = {
        **os.environ,
        "FINECHAIN_RESULTS": str(results),
        "FINECHAIN_DATASETS": str(datasets),
        "FINECHAIN_DOC": str(results / "benchmarks.md"),
    }
    if backbone is not None:
        env["FINECHAIN_BENCH_BACKBONE"] = str(backbone)
    done = subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_split_sweep_quick_writes_result_records(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "split-sweep", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "split_sweep_quick.json").read_text())
    keys = {"suite", "task", "system", "variant", "metric", "value", "unit", "device", "date"}
    assert records and all(set(r) == keys for r in records)
    assert {r["system"] for r in records} == {"finechain", "hf-trainer"}


def test_train_quick_runs_both_peers_and_renders(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "train", "--quick", timeout=900, backbone=smoke_backbone)
    records = json.loads((tmp_path / "train_quick.json").read_text())
    assert {r["system"] for r in records} == {"finechain", "hf-trainer", "hf-lora"}
    assert {(r["task"], r["metric"]) for r in records if r["system"] == "finechain"} >= {
        ("sst2", "accuracy"),
        ("conll2003", "entity_f1"),
        ("sst2", "elapsed_seconds"),
        ("conll2003", "train_seconds"),
    }
    (tmp_path / "train.json").write_text((tmp_path / "train_quick.json").read_text())
    run_benchmark(tmp_path, shared_datasets, "report", timeout=60)
    assert "| finechain | default (split=2, " in (tmp_path / "benchmarks.md").read_text()


def test_infer_quick_matches_sentence_transformers(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "infer", "--quick", timeout=900, backbone=smoke_backbone)
    records = json.loads((tmp_path / "infer_quick.json").read_text())
    assert {(r["task"], r["system"]) for r in records} >= {
        ("4 tasks", "finechain"),
        ("4 tasks", "hf-separate"),
        ("4 tasks", "hf-pipeline"),
        ("embeddings", "sentence-transformers"),
    }
    stages = {r["variant"]: r["value"] for r in records if r["task"] == "4 tasks: seconds per stage"}
    assert len(stages) in {3, 6} and all(seconds > 0 for seconds in stages.values())  # tokenise, encoder and heads, decoding
    cosines = {r["variant"]: r["value"] for r in records if r["metric"] == "min_cosine_to_peer"}
    assert max(cosines.values()) > 0.9999  # Chain.embed gives sentence-transformers' embeddings (fp32) ...
    assert min(cosines.values()) > 0.99  # ... and nearly the same under bf16 autocast


def test_memory_quick_measures_fresh_processes(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "memory", "--quick", "--output", "memory_named", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "memory_named.json").read_text())  # --output names the results file
    rss = {r["task"]: r["value"] for r in records if r["metric"] == "rss_mb"}
    assert set(rss) == {"1 task", "4 tasks"} and 200 < rss["1 task"] <= rss["4 tasks"] < 4000


def test_sharing_quick_covers_every_mode(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "sharing", "--quick", timeout=1200, backbone=smoke_backbone)
    records = json.loads((tmp_path / "sharing_quick.json").read_text())
    variants = {r["variant"] for r in records}
    assert len(variants) == 4 and any("added later" in v for v in variants) and any("LoRA" in v for v in variants)
    metrics = {(r["task"], r["metric"]) for r in records}
    assert {("conll2003", "entity_f1"), ("banking77", "accuracy"), ("all four", "samples_per_second")} <= metrics


def test_decoding_quick_compares_both_modes(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "decoding", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "decoding_quick.json").read_text())
    assert {r["variant"].split()[0] for r in records} == {"constrained", "argmax", "running", "trained"}
    running = {r["metric"]: r["value"] for r in records if r["variant"].startswith("running text")}
    assert set(running) == {"entity_f1", "entity_precision", "entity_recall"} and 0 <= running["entity_f1"] <= 1
    from_spans = {r["variant"] for r in records if r["variant"].startswith("trained on running text")}
    assert len(from_spans) == 2  # scored on running text and on word lists


def test_branch_batching_quick_gives_the_same_outputs_both_ways(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "branch-batching", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "branch_batching_quick.json").read_text())
    speeds = {r["variant"] for r in records if r["metric"] == "samples_per_second"}
    assert {v.split(",")[0] for v in speeds} == {"one after another", "stacked (torch.func.vmap)"}
    gaps = {r["variant"]: r["value"] for r in records if r["metric"] == "max_abs_difference"}
    assert gaps["stacked (torch.func.vmap), fp32"] < 1e-4


def test_dropout_quick_times_both_variants_on_both_tasks(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "dropout", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "dropout_quick.json").read_text())
    timed = {(r["task"], r["variant"].split(",")[0]) for r in records if r["metric"] == "ms_per_step" and r["value"] > 0}
    assert timed == {(t, v) for t in ("sst2", "conll2003") for v in ("PyTorch dropout (bernoulli_)", "finechain masks (default)")}
    (tmp_path / "dropout.json").write_text((tmp_path / "dropout_quick.json").read_text())
    run_benchmark(tmp_path, shared_datasets, "report", timeout=60)
    assert "| sst2 | fp32 |" in (tmp_path / "benchmarks.md").read_text()


def test_check_finds_the_known_overlaps_in_the_public_sets(shared_datasets: Path, tmp_path: Path) -> None:
    spec = tmp_path / "public-data.yaml"  # the committed spec, pointed at wherever the datasets are here
    spec.write_text((ROOT / "benchmarks" / "public-data.yaml").read_text().replace("../../shared/datasets", str(shared_datasets)))
    done = subprocess.run(
        [sys.executable, "-m", "finechain", "check", str(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400", "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "banking77: 7 of 3080 test texts also occur in the training data" in done.stdout
    assert "conll2003: 126 of 3453 test texts also occur in the training data" in done.stdout
    assert "sst2: 4 training texts occur with different labels" in done.stdout


def test_small_data_quick_compares_passes_and_the_peer(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "small-data", "--quick", timeout=900, backbone=smoke_backbone)
    records = json.loads((tmp_path / "small_data_quick.json").read_text())
    runs = {(r["task"], r["system"], r["variant"]) for r in records if r["metric"] == "accuracy"}
    variants = [
        ("finechain", "min_steps 40"),
        ("finechain", "min_steps 0 (one pass per epoch)"),
        ("hf-trainer", "full fine-tune, 3 epochs"),
    ]
    assert runs == {(task, system, f"{variant}, seed 13") for task in ("banking77", "sst2") for system, variant in variants}


def test_tagging_defaults_quick_scores_every_variant_and_the_peer(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    variants = ["--variants", "default,split 1"]
    run_benchmark(tmp_path, shared_datasets, "tagging-defaults", "--quick", *variants, timeout=900, backbone=smoke_backbone)
    records = json.loads((tmp_path / "tagging_defaults_quick.json").read_text())
    scores = {(r["task"], r["system"], r["variant"]): r["value"] for r in records if r["metric"] == "entity_f1"}
    runs = [("finechain", "default (split 2)"), ("finechain", "split 1 (split 1)"), ("hf-trainer", "full fine-tune, 1 epochs")]
    names = {"conll2003": "conll2003 (news NER)", "snips": "snips (voice-assistant slots)"}
    expected = {(task, system, f"{names[task]}, 100 sentences: {variant}, seed 13") for task in names for system, variant in runs}
    assert set(scores) == expected and all(0 <= value <= 1 for value in scores.values())


def test_thresholds_quick_scores_every_way_of_choosing_them(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "thresholds", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "thresholds_quick.json").read_text())
    scored = {(r["variant"], r["metric"]) for r in records if r["metric"] in ("micro_f1", "macro_f1")}
    assert len(scored) == 4 * 2 and all(0 <= r["value"] <= 1 for r in records if r["metric"].endswith("_f1"))
    units = {r["unit"] for r in records if r["metric"].endswith("_f1")}
    assert all(unit.startswith("SNIPS slot types per utterance: 270 training texts, 30 validation, 200 test") for unit in units)


def test_serve_quick_answers_every_request(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "serve", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "serve_quick.json").read_text())
    rates = {r["variant"]: r["value"] for r in records if r["metric"] == "samples_per_second"}
    assert any("offline batch" in v for v in rates) and any("8 clients" in v for v in rates)
    assert all(rate > 0 for rate in rates.values())
    errors = {(r["system"], r["variant"].rsplit(", ", 1)[1]): r["value"] for r in records if r["metric"] == "errors"}
    assert errors == {(system, n): 0 for system in ("finechain", "litserve") for n in ("1 client", "8 clients")}  # nothing failed
    assert all(r["value"] > 100 for r in records if r["metric"] == "rss_mb")


def test_pass_cost_quick_fits_a_pass_and_a_token(shared_datasets: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "pass-cost", "--quick", timeout=600)
    records = json.loads((tmp_path / "pass_cost_quick.json").read_text())
    assert len([r for r in records if r["task"] == "pass"]) == 9
    fit = {r["metric"]: r["value"] for r in records if r["task"] == "fit"}
    assert fit["pass_ms"] > 0 and fit["token_ms"] > 0 and fit["pass_tokens"] > 0  # a pass costs something, so does a token
    assert fit["max_relative_error"] < 0.5  # a pass's time: about a fixed cost plus one per token


def test_kernels_quick_times_each_runtime_and_checks_its_products(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "kernels", "--quick", timeout=300, backbone=smoke_backbone)
    records = json.loads((tmp_path / "kernels_quick.json").read_text())
    rates = {r["variant"]: r["value"] for r in records if r["metric"] == "gmacs_per_second"}
    runtimes = ("PyTorch fp32", "PyTorch bf16", "ONNX Runtime fp32", "ONNX Runtime int8")
    assert {f"{runtime}, {rows} rows, one layer" for runtime in runtimes for rows in (32, 256)} <= set(rates)
    assert len(rates) == 4 * 2 * 4 and all(rate > 0 for rate in rates.values())  # three products and a layer, per rows
    errors: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
    for r in records:
        if r["metric"] == "max_relative_error":
            errors[r["variant"].split(", ")[0]].append(r["value"])
    assert all(len(found) == 2 * 3 for found in errors.values())
    assert max(errors["PyTorch fp32"] + errors["ONNX Runtime fp32"]) < 1e-4  # each times the product it names
    assert min(errors["PyTorch bf16"] + errors["ONNX Runtime int8"]) > 1e-4  # rounded: bf16 and int8 really run
    assert max(errors["PyTorch bf16"] + errors["ONNX Runtime int8"]) < 0.05  # and are only rounded


def test_export_quick_compares_pytorch_and_onnx_runtime(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    out = run_benchmark(tmp_path, shared_datasets, "export", "--quick", "--keep", timeout=900, backbone=smoke_backbone)
    kept = Path(out.rsplit("kept the chain and its exports in ", 1)[1].strip())
    assert (kept / "onnx" / "model.onnx").is_file() and (kept / "int8" / "model.onnx").is_file()  # --keep keeps them
    shutil.rmtree(kept)
    records = json.loads((tmp_path / "export_quick.json").read_text())
    metric = {(r["task"], r["variant"]): r["value"] for r in records if r["metric"] in ("accuracy", "entity_f1")}
    fp32 = {task: v for (task, variant), v in metric.items() if variant == "PyTorch fp32"}
    onnx = {task: v for (task, variant), v in metric.items() if variant == "ONNX Runtime fp32 (finechain export)"}
    assert set(fp32) == {"sst2", "agnews", "banking77", "conll2003"} and onnx == pytest.approx(fp32, abs=0.021)  # one example in 50
    sizes = {r["variant"]: r["value"] for r in records if r["metric"] == "artifact_mb"}
    assert sizes["ONNX Runtime int8 (finechain compress --int8)"] < 0.6 * sizes["ONNX Runtime fp32 (finechain export)"]
    paired = {r["variant"]: r for r in records if r["metric"] == "speedup"}  # each variant against both PyTorch rows, per round
    timed = [r["variant"].removesuffix(", batch 32") for r in records if r["metric"] == "samples_per_second" and "batch 32" in r["variant"]]
    default = next(v for v in timed if v.startswith("PyTorch, the machine's default"))
    expected = {f"{v}, batch 32, paired with {reference}" for v in timed for reference in ("PyTorch fp32", "the default")}
    expected -= {"PyTorch fp32, batch 32, paired with PyTorch fp32", f"{default}, batch 32, paired with the default"}
    assert set(paired) == expected and all(r["value"] > 0 and "within a round: median of 1 (" in r["unit"] for r in paired.values())
    (tmp_path / "export.json").write_text((tmp_path / "export_quick.json").read_text())
    run_benchmark(tmp_path, shared_datasets, "report", timeout=60)
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| ONNX Runtime int8 (finechain compress --int8) | " in report
    assert "| vs fp32, round by round | vs the default, round by round |" in report
    student = next(line for line in report.splitlines() if line.startswith("| student: ") and "PyTorch fp32 |" in line)
    assert student.count("x (") == 2  # its ratios to both PyTorch rows within the round


def test_export_embeddings_quick_exports_the_backbone_embeddings(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    """The embeddings suite without its peer (sentence-transformers' ONNX extra needs its own environment): the export
    gives PyTorch's vectors, int8 nearly so, and the report renders the table."""
    run_benchmark(tmp_path, shared_datasets, "export-embeddings", "--quick", timeout=600, backbone=smoke_backbone)
    records = json.loads((tmp_path / "export_embeddings_quick.json").read_text())
    cosine = {r["variant"]: r["value"] for r in records if r["metric"] == "min_cosine"}
    assert cosine["ONNX Runtime fp32 (export --embeddings)"] > 0.9999 and 0.95 < cosine["ONNX Runtime int8 (compress --int8)"] < 1.0
    speeds = [r for r in records if r["metric"] == "samples_per_second"]
    assert len(speeds) == 6 and all(r["value"] > 0 and r["system"] == "finechain" for r in speeds)
    (tmp_path / "export_embeddings.json").write_text((tmp_path / "export_embeddings_quick.json").read_text())
    run_benchmark(tmp_path, shared_datasets, "report", timeout=60)
    assert "| finechain | ONNX Runtime int8 (compress --int8) | " in (tmp_path / "benchmarks.md").read_text()


def test_an_exported_chain_runs_in_a_virtual_environment_without_pytorch(tmp_path: Path) -> None:
    """A fresh virtual environment with ONNX Runtime, tokenizers, NumPy and the command line's own small libraries (no
    torch, no transformers): ``finechain predict`` on an exported folder answers like the chain."""
    from finechain import Chain
    from finechain.export.onnx import export_onnx

    release = ROOT / "tests" / "fixtures" / "release_0_1_0" / "frozen"
    export_onnx(release, tmp_path / "onnx")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    packages = ["onnxruntime", "tokenizers", "numpy", "pydantic", "pyyaml", "regex", "typer", "rich"]
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages], check=True, timeout=900)
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0  # really without it
    done = subprocess.run(
        [python, "-m", "finechain", "predict", str(tmp_path / "onnx")],
        input="alice visited new york\nvery good music\n",
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "src")},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    chain = Chain.from_pretrained(release)
    chain.precision = "fp32"
    expected = chain.predict(["alice visited new york", "very good music"])
    assert [a["ner"]["entities"][0]["text"] for a in answers[:1]] == [expected[0]["ner"].entities[0].text]
    assert [a["sentiment"]["label"] for a in answers] == [p["sentiment"].label for p in expected]
    assert [a["stars"]["value"] for a in answers] == pytest.approx([p["stars"].value for p in expected], abs=1e-4)


def test_zero_shot_quick_matches_sentence_transformers(shared_datasets: Path, tmp_path: Path) -> None:
    run_benchmark(tmp_path, shared_datasets, "zero-shot", "--quick", "--no-train", "--tasks", "sst2,agnews", timeout=600)
    records = json.loads((tmp_path / "zero_shot_quick.json").read_text())
    value = {(r["task"], r["system"], r["variant"], r["metric"]): r["value"] for r in records}
    for task in ("sst2", "agnews"):
        majority = value[(task, "finechain", "majority class (no model)", "accuracy")]
        for variant in ("zero-shot, label names", "zero-shot, label described"):
            ours = value[(task, "finechain", variant, "accuracy")]
            assert ours == value[(task, "sentence-transformers", variant, "accuracy")]  # the same embeddings, the same answers
            assert ours > majority + 0.1


def test_robustness_quick_scores_clean_and_typo_texts(shared_datasets: Path, smoke_backbone: Path, tmp_path: Path) -> None:
    run_benchmark(
        tmp_path,
        shared_datasets,
        "robustness",
        "--quick",
        "--tasks",
        "sst2",
        "--variants",
        "default,adversarial: fgm",
        backbone=smoke_backbone,
    )
    records = json.loads((tmp_path / "robustness_quick.json").read_text())
    variants = ("default", "adversarial: fgm")
    expected = {(f"{v}, seed 13", m) for v in variants for m in ("accuracy", "typo_accuracy", "train_seconds")}
    assert {(r["variant"], r["metric"]) for r in records} == expected
