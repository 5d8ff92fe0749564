"""Export to ONNX and int8: the exported folder predicts what the chain predicts, with ONNX Runtime and without
PyTorch; bad folders are one-line errors and a failed export leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from finechain import Chain
from finechain.errors import FinechainError
from finechain.export.onnx import _Graph, _plain_attention, _sample_inputs, _trace, export_onnx
from finechain.export.quantize import quantize_int8
from finechain.inference import Engine
from finechain.inference.exported import EXPORT_MANIFEST, PACKED_INPUTS, ExportedChain, OnnxRunner, read_export_manifest
from tests.conftest import run_cli as cli

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0"
ROOT = Path(__file__).resolve().parent.parent
# short texts, and one longer than the chains' 32-token max_length: token-level tasks read it through windows
TEXTS = ["very good music", "weak ending and poor plot", "alice visited new york", "bob met carol in paris today"]
TEXTS += ["alice and bob visited new york and paris with carol " * 5]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.1.0 chain with every task type (LoRA, a layer mix, multi-label, regression, NER), exported."""
    out = tmp_path_factory.mktemp("export") / "frozen-onnx"
    export_onnx(RELEASE / "frozen", out)
    return out


@pytest.fixture(scope="module")
def per_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same chain exported with a graph per task (graphs that take padded batches)."""
    out = tmp_path_factory.mktemp("export") / "per-task"
    export_onnx(RELEASE / "frozen", out, per_task=True)
    return out


def _same(ours: dict, theirs: dict) -> None:
    """Two typed predictions alike: the same labels, tags and spans; scores to 1e-4."""
    for key, value in ours.items():
        other = theirs[key]
        if key == "entities":
            assert [(e["type"], e["start"], e["end"]) for e in value] == [(e["type"], e["start"], e["end"]) for e in other]
            assert [e["score"] for e in value] == pytest.approx([e["score"] for e in other], abs=1e-4)
        elif isinstance(value, float | dict):
            assert value == pytest.approx(other, abs=1e-4)
        else:
            assert value == other


def _attention_of(chain: Chain) -> dict[str, str]:
    """Each module's attention implementation, by module name (the modules that have one)."""
    configs = {name: getattr(module, "config", None) for name, module in chain.model.named_modules()}
    return {name: c._attn_implementation for name, c in configs.items() if hasattr(c, "_attn_implementation")}


def test_tracing_switches_attention_to_plain_and_back_even_on_failure() -> None:
    chain = Chain.from_pretrained(RELEASE / "joint")
    attention = _attention_of(chain)
    assert attention and "eager" not in attention.values()
    with pytest.raises(RuntimeError, match="tracing failed"), _plain_attention(chain.model):
        assert set(_attention_of(chain).values()) == {"eager"}  # trunk and every branch
        raise RuntimeError("tracing failed")
    assert _attention_of(chain) == attention


@pytest.mark.parametrize("name", ["frozen", "joint"])
def test_the_exported_folder_predicts_what_the_chain_predicts(name: str, tmp_path: Path) -> None:
    chain = Chain.from_pretrained(RELEASE / name)
    chain.precision = "fp32"
    manifest = export_onnx(chain, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [EXPORT_MANIFEST, "model.onnx", "tokenizer.json"]
    ops = {node.op_type for node in onnx.load(tmp_path / "out" / "model.onnx").graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # attention traced plain, not as SDPA with its NaN guard per layer
    assert set(manifest.tasks) == set(chain.tasks) and all(t.max_abs_diff < 1e-4 for t in manifest.tasks.values())
    if name == "frozen":
        assert "merge LoRA: sentiment_lora" in manifest.steps  # LoRA folded into plain layers before tracing
    engine = Engine(ExportedChain(tmp_path / "out"))
    for ours, theirs in zip(chain.predict(TEXTS), engine.predict(TEXTS), strict=True):
        assert ours.keys() == theirs.keys()
        for task in ours:
            _same(ours[task].to_dict(), theirs[task].to_dict())
    # a task subset in one request, and dynamic batch and sequence sizes (batch 1 and 3, 5 to 32+ tokens)
    one = engine.predict(TEXTS[:1], ["stars"] if name == "frozen" else None)
    assert list(one[0]) == (["stars"] if name == "frozen" else list(chain.tasks))
    engine.batch_size = 3
    assert [p["ner"].to_dict() for p in engine.predict(TEXTS)] == [
        p["ner"].to_dict() for p in Engine(ExportedChain(tmp_path / "out")).predict(TEXTS)
    ]


def test_a_graph_per_task_answers_like_the_chain_and_rows_run_only_their_tasks(exported: Path, tmp_path: Path) -> None:
    """``per_task``: a trunk graph and one graph per task (a layer-mix task reads every trunk state); the answers of the
    chain; rows of one batch asking for different tasks run only those; int8 and fp16 rewrite every graph; a missing
    task graph is a one-line error."""
    from finechain.export.half import store_half

    chain = Chain.from_pretrained(RELEASE / "frozen")
    chain.precision = "fp32"
    out = tmp_path / "per-task"
    manifest = export_onnx(chain, out, per_task=True)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([EXPORT_MANIFEST, "tokenizer.json", "trunk.onnx", *(f"tasks/{name}.onnx" for name in chain.tasks)])
    assert manifest.format == 2 and manifest.steps[0] == "export: onnx, a graph per task"
    assert all(t.max_abs_diff < 1e-4 for t in manifest.tasks.values())
    reads = {name: len(task.inputs) for name, task in manifest.tasks.items()}
    assert reads["sentiment"] == 1 and max(reads.values()) == chain.split + 1  # the layer mix: embeddings + each trunk layer
    engine = Engine(ExportedChain(out))
    for ours, theirs in zip(chain.predict(TEXTS), engine.predict(TEXTS), strict=True):
        for task in ours:
            _same(ours[task].to_dict(), theirs[task].to_dict())
    one_graph = Engine(ExportedChain(exported))
    got = []
    for runner in (engine, one_graph):  # two requests in one batch: texts 0-1 want sentiment, texts 2-4 ner
        first, second = runner.prepare(TEXTS[:2], ["sentiment"]), runner.prepare(TEXTS[2:], ["ner"])
        got.append(runner.forward(first.rows + second.rows))
        assert all(set(r) == {"sentiment"} for r in got[-1][: len(first.rows)])
        assert all(set(r) <= {"ner"} for r in got[-1][len(first.rows) :]) and any(got[-1][len(first.rows) :])
    for a, b in zip(*got, strict=True):
        assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert [p["ner"].tags for p in engine.predict(TEXTS[2:], ["ner"])] == [p["ner"].tags for p in one_graph.predict(TEXTS[2:], ["ner"])]
    quantize_int8(out, tmp_path / "int8")
    small = store_half(tmp_path / "int8", tmp_path / "int8-fp16")
    assert small.weights == "int8, fp16 storage" and all(0 < t.max_abs_diff < 1.0 for t in small.tasks.values())
    assert sorted(p.relative_to(tmp_path / "int8-fp16").as_posix() for p in (tmp_path / "int8-fp16").rglob("*.onnx")) == [
        f for f in files if f.endswith(".onnx")
    ]
    assert [p["sentiment"].label for p in Engine(ExportedChain(tmp_path / "int8-fp16")).predict(TEXTS)] == [
        p["sentiment"].label for p in engine.predict(TEXTS)
    ]
    (out / "tasks" / "ner.onnx").unlink()
    with pytest.raises(FinechainError, match=r"tasks/ner\.onnx is missing") as error:
        ExportedChain(out)
    assert "\n" not in str(error.value)


def test_one_graph_takes_whole_batches_in_packed_rows(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One graph for every task takes packed rows (as a PyTorch chain runs on a CPU): a batch of mixed lengths is one
    session call, its texts laid end to end in fewer rows than texts, and every text gets the answer it gets alone
    (token-level outputs on its tokens)."""
    manifest = read_export_manifest(exported)
    assert (manifest.format, manifest.packed, manifest.hidden_size) == (5, True, 32) and manifest.steps[-2:] == [
        "export: onnx, packed rows",
        "merge LoRA: sentiment_lora",
    ]
    assert [i.name for i in onnx.load(exported / "model.onnx").graph.input] == list(PACKED_INPUTS)
    texts = [" ".join(["word"] * n) for n in (1, 2, 3, 1, 2, 3, 4, 30)] * 2  # short ones and a long one
    chain = ExportedChain(exported)
    feeds: list[dict[str, np.ndarray]] = []
    run = chain.session.run
    monkeypatch.setattr(chain.session, "run", lambda names, given: feeds.append(given) or run(names, given), raising=False)
    engine = Engine(chain)
    together = engine.outputs(texts, ["sentiment", "ner"])[0]
    rows = feeds[0]["input_ids"].shape[0]  # the texts, the longer ones in several windows (max_length 32)
    assert len(feeds) == 1 and rows >= len(texts)
    assert 0 < feeds[0]["pack_segments"].shape[0] < rows  # packed: fewer rows than texts
    assert sorted(set(feeds[0]["pack_segments"].ravel().tolist()) - {-1}) == list(range(rows))
    engine.batch_size = 1
    alone = engine.outputs(texts, ["sentiment", "ner"])[0]
    for name in ("sentiment", "ner"):
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(together[name], alone[name], strict=True))


def test_a_folder_exported_before_packed_rows_still_runs(exported: Path, tmp_path: Path) -> None:
    """A single graph that takes padded batches (as ``finechain export`` wrote them before format 5) is run as before:
    fed the padded batch alone, cut by length, with the same answers as the packed graph."""
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    chain = Chain.from_pretrained(RELEASE / "frozen")
    model = chain.model.float().eval()
    model.merge_adapters()
    names = list(model.tasks)
    axes = {n: {0: "batch", 1: "tokens"} if model.tasks[n].head.token_level else {0: "batch"} for n in names}
    _trace(_Graph(model, names), _sample_inputs(model), ["input_ids", "attention_mask"], names, axes, old / "model.onnx", 18, model)
    manifest = json.loads((old / EXPORT_MANIFEST).read_text())
    del manifest["packed"], manifest["hidden_size"]
    (old / EXPORT_MANIFEST).write_text(json.dumps(manifest | {"format": 1}))
    before = ExportedChain(old)
    assert not before.runner().packs and before.inputs == ["input_ids", "attention_mask"]
    texts = [" ".join(["word"] * n) for n in (1, 2, 3, 1, 2, 3, 4, 30)] + TEXTS
    for a, b in zip(Engine(before).predict(texts), Engine(ExportedChain(exported)).predict(texts), strict=True):
        for task in a:
            _same(a[task].to_dict(), b[task].to_dict())


def test_a_padded_graph_cuts_batches_by_its_threads(per_task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs that take padded batches (a graph per task): one thread, a session call costs ~5 tokens, so mixed
    lengths are cut finely; more threads: ~30, fewer, larger calls (small ones leave threads idle). The answers are the
    same either way."""
    texts = [" ".join(["word"] * n) for n in (1, 2, 3, 5, 8, 13, 21, 30)] * 2
    calls: list[int] = []
    run = OnnxRunner.run
    monkeypatch.setattr(OnnxRunner, "run", lambda self, ids, *a, **k: calls.append(len(ids)) or run(self, ids, *a, **k))
    answers, made = [], []
    for threads in (1, 2):
        chain = ExportedChain(per_task, threads=threads)
        assert not chain.manifest.packed and (chain.threads, chain.runner().pass_tokens) == (threads, 5.0 if threads == 1 else 30.0)
        calls.clear()
        answers.append([v for p in Engine(chain).predict(texts, ["sentiment"]) for v in p["sentiment"].scores.values()])
        assert sum(calls) == len(texts)  # each text once
        made.append(len(calls))
    assert made[1] < made[0]  # two threads: fewer, larger calls
    assert answers[0] == pytest.approx(answers[1], abs=1e-5)


def test_sessions_that_take_turns_do_not_spin(exported: Path, per_task: Path) -> None:
    """A graph per task: the trunk's and the tasks' sessions take turns on every call, so their idle threads sleep
    instead of spinning (a spinning session took CPU from the next: 2-3x slower, benchmarks runtimes); one graph keeps
    ONNX Runtime's spinning (faster alone); either can be asked for; the answers are the same."""

    def spins(chain: ExportedChain) -> list[str]:
        sessions = [chain.session, *chain.task_sessions.values()]
        return [s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") for s in sessions]

    one, several = ExportedChain(exported), ExportedChain(per_task)
    assert one.spinning and several.spinning is False
    assert spins(several) == ["0"] * (1 + len(several.task_sessions))
    with pytest.raises(Exception, match="allow_spinning"):  # not set: ONNX Runtime's default (spin)
        spins(one)
    asked = ExportedChain(per_task, spinning=True)
    assert asked.spinning and not ExportedChain(exported, spinning=False).spinning
    a, b = Engine(several).outputs(TEXTS, ["ner"])[0]["ner"], Engine(asked).outputs(TEXTS, ["ner"])[0]["ner"]
    assert all(np.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_export_of_chosen_tasks_and_its_checks(tmp_path: Path) -> None:
    manifest = export_onnx(RELEASE / "frozen", tmp_path / "two", tasks=["sentiment", "ner"])
    assert list(manifest.tasks) == ["sentiment", "ner"] and manifest.source.endswith("frozen")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "two").stat().st_mode & 0o777 == 0o777 & ~umask  # readable by the service that serves it, not 0700
    exported = ExportedChain(tmp_path / "two")
    assert [o.name for o in exported.session.get_outputs()] == ["sentiment", "ner"]
    with pytest.raises(FinechainError, match=r"unknown task\(s\) \['stars'\]"):
        Engine(exported).predict(["x"], ["stars"])
    with pytest.raises(FinechainError, match="already exists"):
        export_onnx(RELEASE / "frozen", tmp_path / "two")
    with pytest.raises(FinechainError, match=r"unknown task\(s\) \['nope'\]"):
        export_onnx(RELEASE / "frozen", tmp_path / "three", tasks=["nope"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # a failed export leaves no folder, no temporary one


def test_a_broken_exported_folder_is_a_one_line_error(exported: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(exported, tmp_path / "broken"))
    (broken / "tokenizer.json").unlink()
    with pytest.raises(FinechainError, match=r"tokenizer\.json is missing"):
        ExportedChain(broken)
    shutil.copy(exported / "tokenizer.json", broken / "tokenizer.json")
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(FinechainError, match="the ONNX graph cannot be loaded"):
        ExportedChain(broken)
    manifest = json.loads((exported / EXPORT_MANIFEST).read_text())
    (broken / EXPORT_MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(FinechainError, match="export format 99 is newer than this finechain reads"):
        read_export_manifest(broken)
    (broken / EXPORT_MANIFEST).write_text(json.dumps({**manifest, "max_length": "long"}))
    with pytest.raises(FinechainError, match="max_length: Input should be a valid integer"):
        read_export_manifest(broken)


def test_int8_keeps_the_answers_and_records_the_step(exported: Path, tmp_path: Path) -> None:
    manifest = quantize_int8(exported, tmp_path / "int8")
    assert manifest.weights == "int8" and manifest.steps[-1].startswith("int8")
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == [EXPORT_MANIFEST, "model.onnx", "tokenizer.json"]
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 6 * 4 and any(node.op_type == "MatMulInteger" for node in graph.node)  # every layer's products
    fp32, int8 = Engine(ExportedChain(exported)), Engine(ExportedChain(tmp_path / "int8"))
    a, b = fp32.outputs(TEXTS, ["sentiment"])[0]["sentiment"], int8.outputs(TEXTS, ["sentiment"])[0]["sentiment"]
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) == pytest.approx(
        manifest.tasks["sentiment"].max_abs_diff, abs=0.5
    )
    assert all(0 < t.max_abs_diff < 1.0 for t in manifest.tasks.values())  # moved, but not far (a tiny random model)
    with pytest.raises(FinechainError, match="already has int8 weights"):
        quantize_int8(tmp_path / "int8", tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("shape", [(384, 384), (384, 1536), (1536, 384)])
def test_int8_products_stay_close_on_this_cpu(shape: tuple[int, int], tmp_path: Path) -> None:
    # full-range int8 weights overflowed ONNX Runtime's 16-bit pair sums on CPUs without VNNI (19% off, 1% with VNNI)
    from benchmarks.kernels import onnx_product, relative_error

    generator = np.random.default_rng(13)
    weight = (generator.standard_normal(shape) * 0.05).astype(np.float32)
    x = generator.standard_normal((64, shape[0])).astype(np.float32)
    error = relative_error(onnx_product(weight, tmp_path, True, 1)(x), x @ weight)
    assert 1e-4 < error < 0.05  # rounded by int8, and only rounded


def test_cli_export_then_predict_and_eval_on_the_exported_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Path(shutil.copytree(RELEASE / "frozen", tmp_path / "chain"))
    code, out, _ = cli(["export", str(chain), "--out", str(tmp_path / "onnx")], monkeypatch, capsys)
    assert code == 0 and "exported to" in out and "sentiment_lora" in out
    code, _, err = cli(["export", str(chain), "--out", str(tmp_path / "onnx")], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and "already exists" in err
    code, _, err = cli(["export", str(chain), "--out", str(tmp_path / "x"), "--format", "tflite"], monkeypatch, capsys)
    assert code == 2 and "unknown export format 'tflite'" in err
    code, out, _ = cli(["export", str(chain), "--out", str(tmp_path / "per-task"), "--per-task-graphs"], monkeypatch, capsys)
    assert code == 0 and (tmp_path / "per-task" / "tasks" / "sentiment_lora.onnx").is_file()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:4]) + "\n")
    answers = {}
    for folder in ("chain", "onnx", "per-task"):  # the exported folders compute in fp32: they take no --precision
        precision = ["--precision", "fp32"] if folder == "chain" else []
        code, out, _ = cli(["predict", str(tmp_path / folder), "--input", str(texts), *precision], monkeypatch, capsys)
        assert code == 0
        answers[folder] = [json.loads(line) for line in out.splitlines()]
    for ours, theirs, per_task in zip(answers["chain"], answers["onnx"], answers["per-task"], strict=True):
        assert ours.keys() == theirs.keys() == per_task.keys()
        for task in ours.keys() - {"text"}:
            _same(ours[task], theirs[task])
            _same(ours[task], per_task[task])
    for folder, option, fix in (
        ("onnx", ["--precision", "fp16"], "leave --precision at auto"),
        ("onnx", ["--device", "cuda"], "drop --device"),
    ):
        code, _, err = cli(["predict", str(tmp_path / folder), "--input", str(texts), *option], monkeypatch, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"{option[0]} {option[1]}: an exported " in err and fix in err
    with pytest.raises(FinechainError, match=r"precision bf16: an exported chain computes in the precision it was exported .*\(fp32\)"):
        Engine(ExportedChain(tmp_path / "onnx"), precision="bf16")  # the Python API refuses it too, not ignores it
    code, _, err = cli(["predict", str(chain), "--input", str(texts), "--runtime", "onnxruntime"], monkeypatch, capsys)
    assert code == 2 and "--runtime onnxruntime runs an exported folder, and this is a PyTorch chain" in err and "finechain export" in err
    code, _, err = cli(["eval", str(chain), "--task", "sentiment", "--data", str(texts), "--runtime", "openvino"], monkeypatch, capsys)
    assert code == 2 and "--runtime openvino runs an exported folder" in err  # before the data is read
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nvery good music,pos\nweak ending and poor plot,neg\ngood plot,pos\npoor music,neg\n")
    reports = {}
    for folder in ("chain", "onnx"):
        code, out, _ = cli(["eval", str(tmp_path / folder), "--task", "sentiment", "--data", str(data)], monkeypatch, capsys)
        assert code == 0, out
        reports[folder] = json.loads(next((tmp_path / folder / "reports" / "sentiment").glob("*.json")).read_text())
    assert reports["chain"]["accuracy"] == reports["onnx"]["accuracy"]
    assert reports["chain"]["macro_f1"] == pytest.approx(reports["onnx"]["macro_f1"])
    code, out, _ = cli(["compress", str(chain), "--out", str(tmp_path / "int8")], monkeypatch, capsys)
    assert code == 0 and read_export_manifest(tmp_path / "int8").weights == "int8"  # a chain folder: exported, then int8
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == [EXPORT_MANIFEST, "model.onnx", "tokenizer.json"]  # no .fp32
    code, out, _ = cli(["info", str(tmp_path / "int8")], monkeypatch, capsys)
    assert code == 0 and "int8 weights; steps: export: onnx, packed rows; merge LoRA: sentiment_lora; int8" in out and "ner" in out
    assert re.search(r"^stars +regression +- ", out, re.M)  # no labels to count


BLOCK_TORCH = """
import sys
class Blocked:  # the model stack is not there: any import of it fails, as in a virtual environment without it
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "safetensors", "peft", "sklearn"}:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Blocked())
sys.argv = ["finechain", "predict", sys.argv[1], "--task", "ner"]
from finechain.cli.app import main
main()
"""


@pytest.mark.parametrize("graphs", ["one", "per task"])
def test_the_exported_folder_runs_without_pytorch(exported: Path, tmp_path: Path, graphs: str) -> None:
    """The CLI's predict on an exported folder (one graph, or a graph per task) in a process where importing torch,
    transformers or safetensors fails."""
    folder = exported if graphs == "one" else tmp_path / "per-task"
    if graphs == "per task":
        export_onnx(RELEASE / "frozen", folder, per_task=True)
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(folder)],
        input="alice visited new york\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert [e["type"] for e in answer["ner"]["entities"]] == ["PER", "LOC"]


def _weight_bytes(folder: Path, dtype: str | None = None) -> int:
    """Bytes of the exported graph's stored weights (of one ONNX data type, e.g. ``FLOAT``)."""
    import onnx

    weights = onnx.load(str(folder / "model.onnx")).graph.initializer
    return sum(len(t.raw_data) for t in weights if dtype is None or t.data_type == getattr(onnx.TensorProto, dtype))


@pytest.mark.parametrize(("storage", "largest"), [("fp16", 1e-2), ("bf16", 5e-2)])
def test_half_storage_halves_the_graph_and_keeps_the_answers(exported: Path, tmp_path: Path, storage: str, largest: float) -> None:
    """fp16 and bf16 storage: half the weight bytes, the same answers, outputs moved by the rounding only (bf16's 8 bits
    move them more than fp16's 11), recorded in the manifest; a folder stored either way is not halved again."""
    from finechain.export.half import store_half

    manifest = store_half(exported, tmp_path / "half", storage)  # type: ignore[arg-type]
    assert manifest.weights == f"fp32, {storage} storage" and manifest.steps[-1].startswith(f"{storage} storage")
    assert _weight_bytes(tmp_path / "half") < 0.55 * _weight_bytes(exported)  # (the tiny graph's file is mostly its nodes)
    assert _weight_bytes(tmp_path / "half", {"fp16": "FLOAT16", "bf16": "BFLOAT16"}[storage]) > 0
    assert (tmp_path / "half" / "model.onnx").stat().st_size < (exported / "model.onnx").stat().st_size
    fp32, half = Engine(ExportedChain(exported)), Engine(ExportedChain(tmp_path / "half"))
    for ours, theirs in zip(fp32.predict(TEXTS), half.predict(TEXTS), strict=True):  # every task: the same answer
        for task in ours:
            decided = [n for n in ("label", "labels", "tags") if hasattr(ours[task], n)] or ["value"]
            for name in decided:
                assert getattr(ours[task], name) == pytest.approx(getattr(theirs[task], name), abs=largest), (task, name)
    a, b = fp32.outputs(TEXTS, ["sentiment"])[0]["sentiment"], half.outputs(TEXTS, ["sentiment"])[0]["sentiment"]
    change = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    assert 0 < change < largest and manifest.tasks["sentiment"].max_abs_diff >= change  # the rounding: moved, barely
    for other in ("fp16", "bf16"):
        with pytest.raises(FinechainError, match=f"already stores its weights as {storage}"):
            store_half(tmp_path / "half", tmp_path / "again", other)  # type: ignore[arg-type]
    with pytest.raises(FinechainError, match=f"already has fp32, {storage} storage weights"):
        quantize_int8(tmp_path / "half", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_bf16_storage_keeps_weights_beyond_the_fp16_range(tmp_path: Path) -> None:
    """A weight beyond fp16's +-65,504 keeps its tensor in fp32 with fp16 storage; bf16 stores it, within 0.4%."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from finechain.export.half import _halve

    big = np.full((32, 32), 1e5, dtype=np.float32)
    big[0, 0] = 3.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(big, "w")],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    for storage, kept in (("fp16", TensorProto.FLOAT), ("bf16", TensorProto.BFLOAT16)):
        _halve(tmp_path / "g.onnx", tmp_path / f"{storage}.onnx", storage)  # type: ignore[arg-type]
        (weight,) = onnx.load(str(tmp_path / f"{storage}.onnx")).graph.initializer
        assert weight.data_type == kept
        assert np.allclose(numpy_helper.to_array(weight).astype(np.float32), big, rtol=4e-3)


def test_cli_compress_int8_with_fp16_storage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--int8 --fp16: int8 matrix products, and what quantization leaves in fp32 (the embedding tables) stored as fp16."""
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "int8"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "both"), "--int8", "--fp16", "-q"], monkeypatch, capsys)
    assert code == 0, err
    manifest = read_export_manifest(tmp_path / "both")
    assert manifest.weights == "int8, fp16 storage" and [s.split(":")[0] for s in manifest.steps][-2:] == ["int8", "fp16 storage"]
    assert _weight_bytes(tmp_path / "both", "FLOAT") < 0.5 * _weight_bytes(tmp_path / "int8", "FLOAT")  # embeddings, mostly
    assert _weight_bytes(tmp_path / "both", "INT8") == _weight_bytes(tmp_path / "int8", "INT8") > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both", "chain", "int8"]  # no scratch folder left
    int8, both = Engine(ExportedChain(tmp_path / "int8")), Engine(ExportedChain(tmp_path / "both"))
    assert [p["sentiment"].label for p in int8.predict(TEXTS)] == [p["sentiment"].label for p in both.predict(TEXTS)]
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "both"), "--int8", "--fp16", "-q"], monkeypatch, capsys)
    assert code == 2 and "already exists" in err
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "bf16"), "--bf16", "-q"], monkeypatch, capsys)  # bf16 alone
    assert code == 0, err
    manifest = read_export_manifest(tmp_path / "bf16")
    assert manifest.weights == "fp32, bf16 storage" and _weight_bytes(tmp_path / "bf16", "BFLOAT16") > 0
    teacher = Chain.from_pretrained(chain)
    teacher.precision = "fp32"
    for ours, theirs in zip(teacher.predict(TEXTS), Engine(ExportedChain(tmp_path / "bf16")).predict(TEXTS), strict=True):
        assert ours["sentiment"].label == theirs["sentiment"].label
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "two"), "--fp16", "--bf16", "-q"], monkeypatch, capsys)
    assert code == 2 and "--fp16 and --bf16" in err and "choose one" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "two").exists()


def test_int8_quantizes_a_weight_that_several_tasks_share(tmp_path: Path) -> None:
    """Two tasks with the same branch weights (as frozen branches have): the export stores them once and the second
    task reads them through Identity nodes, which ONNX Runtime's quantizer does not follow; int8 still covers both."""
    import onnx

    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    shutil.copytree(chain / "tasks" / "sentiment", chain / "tasks" / "mood")
    manifest = json.loads((chain / "finechain.json").read_text())
    manifest["tasks"]["mood"] = manifest["tasks"]["sentiment"]
    (chain / "finechain.json").write_text(json.dumps(manifest))
    quantize_int8(chain, tmp_path / "int8")
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    float_matrices = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert float_matrices and all("embeddings" in name for name in float_matrices), float_matrices
    answers = Engine(ExportedChain(tmp_path / "int8")).predict(TEXTS)
    assert [a["mood"].label for a in answers] == [a["sentiment"].label for a in answers]


def test_sentence_embeddings_travel_with_the_export_and_through_int8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``embeddings=True`` adds the backbone's sentence embeddings as a graph: the same vectors as ``Chain.embed``,
    checked at export, kept (and re-checked) by int8 and fp16; an export without them, or from a tuned trunk, says
    what to do."""
    chain = Chain.from_pretrained(RELEASE / "frozen")
    chain.precision = "fp32"
    code, out, _ = cli(
        ["export", str(RELEASE / "frozen"), "--out", str(tmp_path / "onnx"), "--embeddings", "--per-task-graphs"], monkeypatch, capsys
    )
    assert code == 0 and "(sentence embeddings)" in out
    manifest = read_export_manifest(tmp_path / "onnx")
    assert (tmp_path / "onnx" / "embeddings.onnx").is_file() and manifest.embedding_size == chain.model.embedding_size
    assert manifest.embeddings_max_abs_diff is not None and manifest.embeddings_max_abs_diff < 1e-4
    assert "sentence embeddings" in manifest.steps[0] and manifest.format == 3  # an older reader says to upgrade
    code, out, _ = cli(["info", str(tmp_path / "onnx")], monkeypatch, capsys)
    assert code == 0 and f"sentence embeddings: embeddings.onnx ({chain.model.embedding_size} values; largest difference" in out
    exported = Engine(ExportedChain(tmp_path / "onnx"))
    ours, theirs = chain.embed(TEXTS), exported.embed(TEXTS)
    assert theirs.shape == ours.shape and np.abs(ours - theirs).max() < 1e-4
    assert np.linalg.norm(theirs, axis=1) == pytest.approx(1.0, abs=1e-5)
    raw = exported.embed(TEXTS, normalize=False)
    assert raw / np.linalg.norm(raw, axis=1, keepdims=True) == pytest.approx(theirs, abs=1e-6)
    assert exported.embed([]).shape == (0, chain.model.embedding_size)
    assert exported.predict(TEXTS[:1])[0].keys() == chain.predict(TEXTS[:1])[0].keys()  # the tasks are untouched
    smaller = quantize_int8(tmp_path / "onnx", tmp_path / "int8")
    assert smaller.embeddings == "embeddings.onnx" and 0 < smaller.embeddings_max_abs_diff < 0.5
    int8 = Engine(ExportedChain(tmp_path / "int8")).embed(TEXTS)
    assert float((int8 * theirs).sum(axis=1).min()) > 0.9  # int8 moves the vectors a little (a tiny random model)
    code, out, _ = cli(["compress", str(tmp_path / "onnx"), "--out", str(tmp_path / "fp16"), "--fp16"], monkeypatch, capsys)
    assert code == 0 and np.abs(Engine(ExportedChain(tmp_path / "fp16")).embed(TEXTS) - theirs).max() < 1e-2
    export_onnx(chain, tmp_path / "plain")
    with pytest.raises(FinechainError, match=r"has no sentence embeddings.*--embeddings"):
        Engine(ExportedChain(tmp_path / "plain")).embed(TEXTS)
    with pytest.raises(FinechainError, match=r"trunk was fine-tuned.*without --embeddings"):
        export_onnx(RELEASE / "joint", tmp_path / "joint", embeddings=True)
    assert not (tmp_path / "joint").exists()


def test_a_chain_without_tasks_exports_its_embeddings_alone(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backbone with no tasks yet: ``--embeddings`` exports one graph, the sentence embeddings (a
    sentence-transformers-style ONNX encoder); without it there is nothing to export."""
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.precision = "fp32"
    with pytest.raises(FinechainError, match="no tasks to export"):
        export_onnx(chain, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    manifest = export_onnx(chain, tmp_path / "onnx", embeddings=True)
    assert manifest.graph == manifest.embeddings == "embeddings.onnx" and not manifest.tasks
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["embeddings.onnx", EXPORT_MANIFEST, "tokenizer.json"]
    exported = ExportedChain(tmp_path / "onnx")
    assert exported.embedding_session is exported.session
    (tmp_path / "texts.txt").write_text("hello\n")
    code, _, err = cli(["predict", str(tmp_path / "onnx"), "--input", str(tmp_path / "texts.txt")], monkeypatch, capsys)
    assert code == 2 and err.strip().endswith("has no tasks to predict (fix: train a task into it first, or embed with Engine.embed)")
    assert np.abs(Engine(exported).embed(TEXTS) - chain.embed(TEXTS)).max() < 1e-4
    quantize_int8(tmp_path / "onnx", tmp_path / "int8")
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["embeddings.onnx", EXPORT_MANIFEST, "tokenizer.json"]
    assert Engine(ExportedChain(tmp_path / "int8")).embed(TEXTS).shape == (len(TEXTS), chain.model.embedding_size)
