"""OpenVINO as the runtime of an exported chain, and static int8 (``compress --int8 --static``): OpenVINO answers what
ONNX Runtime answers; the static graph is calibrated on given texts or on the tasks' training files, records that it
is made for OpenVINO, runs on both runtimes, gives a text the same answer whatever shares its call; what cannot work
is a one-line error that leaves nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from finechain.errors import FinechainError
from finechain.export.onnx import export_onnx
from finechain.export.static_int8 import quantize_static_int8
from finechain.inference import Engine
from finechain.inference.cpu_features import cpu_has_int8_dot, int8_dot_flags
from finechain.inference.exported import EXPORT_MANIFEST, ExportedChain, auto_runtime, read_export_manifest
from finechain.serve.settings import ServeSettings
from tests.conftest import run_cli as cli
from tests.test_export import RELEASE, TEXTS

pytest.importorskip("openvino")
pytest.importorskip("nncf")

CALIBRATION = TEXTS * 8  # 40 texts: enough ranges for the tiny model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.1.0 chain with every task type, exported as one graph."""
    out = tmp_path_factory.mktemp("openvino") / "onnx"
    export_onnx(RELEASE / "frozen", out)
    return out


@pytest.fixture(scope="module")
def static(exported: Path) -> Path:
    out = exported.parent / "static"
    quantize_static_int8(exported, out, texts=CALIBRATION)
    return out


def _largest_change(a: Engine, b: Engine, tasks: list[str]) -> dict[str, float]:
    ours, theirs = a.outputs(TEXTS, tasks)[0], b.outputs(TEXTS, tasks)[0]
    return {t: max(float(np.abs(x - y).max()) for x, y in zip(ours[t], theirs[t], strict=True)) for t in tasks}


@pytest.mark.parametrize(("per_task", "storage"), [(False, None), (True, None), (False, "bf16")])
def test_openvino_runs_an_export_as_onnx_runtime_does(exported: Path, tmp_path: Path, per_task: bool, storage: str | None) -> None:
    """Every task's outputs within bf16 rounding of ONNX Runtime's (OpenVINO computes in bf16 on CPUs that have it),
    one graph or a graph per task, weights stored in fp32 or bf16; the same labels and tags."""
    from finechain.export.half import store_half

    folder = exported
    if per_task:
        folder = tmp_path / "per-task"
        export_onnx(RELEASE / "frozen", folder, per_task=True)
    if storage is not None:
        store_half(folder, tmp_path / storage, storage)  # type: ignore[arg-type]
        folder = tmp_path / storage
    onnx_runtime, openvino = Engine(ExportedChain(folder)), Engine(ExportedChain(folder, runtime="openvino"))
    assert onnx_runtime.model.runtime == "onnxruntime" and openvino.model.runtime == "openvino"
    tasks = onnx_runtime.model.task_names()
    assert max(_largest_change(onnx_runtime, openvino, tasks).values()) < 0.1
    for ours, theirs in zip(onnx_runtime.predict(TEXTS), openvino.predict(TEXTS), strict=True):
        assert ours["ner"].tags == theirs["ner"].tags and ours["sentiment"].label == theirs["sentiment"].label
    with pytest.raises(FinechainError, match="unknown runtime 'tflite'"):
        ExportedChain(folder, runtime="tflite")


def test_static_int8_is_calibrated_made_for_openvino_and_runs_on_both(exported: Path, static: Path, tmp_path: Path) -> None:
    manifest = read_export_manifest(static)
    assert manifest.weights == "int8 static" and manifest.runtime == "openvino" and manifest.format >= 4  # older readers refuse it
    assert manifest.steps[-1].startswith("int8 static") and "calibrated on 40 texts" in manifest.steps[-1]
    assert sorted(p.name for p in static.iterdir()) == [EXPORT_MANIFEST, "model.onnx", "tokenizer.json"]
    graph = onnx.load(str(static / "model.onnx")).graph
    products = [n for n in graph.node if n.op_type == "MatMul"]
    made = {o: n.op_type for n in graph.node for o in n.output}
    quantized = [n for n in products if all(made.get(i) == "DequantizeLinear" for i in n.input)]
    left = [n.name for n in products if n not in quantized]
    assert len(quantized) >= 6 * 4 and all("/attention/self/MatMul" in name for name in left)  # only attention's own products
    # are left in float: every weight product is int8, the frozen branch's (weights it shares with the trunk) too
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= len(quantized)
    made_for_here = auto_runtime("openvino", openvino=True, int8_dot=cpu_has_int8_dot())
    assert ExportedChain(static).runtime == made_for_here  # auto: what the graphs were made for, where it runs well
    fp32 = Engine(ExportedChain(exported))
    tasks = fp32.model.task_names()
    for runtime in ("openvino", "onnxruntime"):
        changes = _largest_change(fp32, Engine(ExportedChain(static, runtime=runtime)), tasks)
        assert all(0 < changes[t] < 1.0 for t in tasks), changes  # moved, but not far (a tiny random model)
    assert all(0 < t.max_abs_diff < 1.0 for t in manifest.tasks.values())
    with pytest.raises(FinechainError, match="already has int8 static weights"):
        quantize_static_int8(static, tmp_path / "again", texts=CALIBRATION)
    assert not (tmp_path / "again").exists()


def test_a_static_answer_does_not_depend_on_what_shares_its_call(static: Path) -> None:
    """Fixed activation scales: a text alone and the same text in a batch of others get the same outputs (dynamic
    int8 takes one scale per call from its largest value, so there they move)."""
    engine = Engine(ExportedChain(static))
    alone = [engine.outputs([text], ["stars"])[0]["stars"][0] for text in TEXTS[:4]]
    together = engine.outputs(TEXTS[:4] * 8, ["stars"])[0]["stars"][:4]
    assert max(float(np.abs(a - b).max()) for a, b in zip(alone, together, strict=True)) < 0.02  # bf16 rounding only


def test_static_int8_calibrates_on_the_training_files_or_says_what_to_give(exported: Path, tmp_path: Path) -> None:
    """Without texts: drawn from each task's training file as trained. None readable: a one-line error naming the
    manifest and --texts; a graph per task: a one-line error; nothing is left behind either way."""
    with pytest.raises(FinechainError, match="no calibration texts") as error:
        quantize_static_int8(exported, tmp_path / "none")  # the fixture's training files are long gone
    assert "--texts" in str(error.value) and "\n" not in str(error.value) and not (tmp_path / "none").exists()
    folder = Path(shutil.copytree(exported, tmp_path / "onnx"))
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t} {i},pos\n" for i in range(30) for t in TEXTS[:2]))
    manifest = json.loads((folder / EXPORT_MANIFEST).read_text())
    manifest["tasks"]["sentiment"]["spec"] = {"name": "sentiment", "train": str(train)}
    (folder / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    done = quantize_static_int8(folder, tmp_path / "static", count=50)
    assert "calibrated on 50 texts" in done.steps[-1] and done.runtime == "openvino"
    per_task = tmp_path / "per-task"
    export_onnx(RELEASE / "frozen", per_task, per_task=True)
    with pytest.raises(FinechainError, match="export without --per-task-graphs"):
        quantize_static_int8(per_task, tmp_path / "per-task-static", texts=CALIBRATION)
    assert not (tmp_path / "per-task-static").exists()


def test_auto_runs_static_int8_on_openvino_only_where_the_cpu_has_int8_dot_products() -> None:
    """Without VNNI or AMX (an AVX2-only CPU) OpenVINO's int8 kernels ran the export benchmark's chain slower than fp32
    and ONNX Runtime did not, so ``auto`` picks ONNX Runtime there; where the CPU's flags cannot be read, OpenVINO."""
    assert auto_runtime("openvino", openvino=True, int8_dot=True) == "openvino"
    assert auto_runtime("openvino", openvino=True, int8_dot=None) == "openvino"
    assert auto_runtime("openvino", openvino=True, int8_dot=False) == "onnxruntime"
    assert auto_runtime("openvino", openvino=False, int8_dot=True) == "onnxruntime"
    assert auto_runtime("onnxruntime", openvino=True, int8_dot=False) == "onnxruntime"
    zen2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme sse4_2 avx f16c fma avx2 sha_ni\n\nprocessor\t: 1\n"
    sapphire = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"
    alder = "flags\t\t: fpu avx2 avx_vnni\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n"
    assert [int8_dot_flags(text) for text in (zen2, sapphire, alder, graviton, "")] == [False, True, True, None, None]
    assert int8_dot_flags("flags\t\t: avx512_vnnix avx2\n") is False  # whole flag names only


def test_auto_falls_back_to_onnx_runtime_where_openvino_is_missing(static: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import finechain.inference.openvino_session as openvino_session

    monkeypatch.setattr(openvino_session, "openvino_installed", lambda: False)
    assert ExportedChain(static).runtime == "onnxruntime"
    with pytest.raises(FinechainError, match="openvino is not installed"):
        ExportedChain(static, runtime="openvino")


def test_cli_compress_static_then_predict_eval_and_bad_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CALIBRATION) + "\n")
    code, out, err = cli(
        ["compress", str(chain), "--out", str(tmp_path / "static"), "--static", "--texts", str(texts), "-q"], monkeypatch, capsys
    )
    assert code == 0, err
    assert read_export_manifest(tmp_path / "static").weights == "int8 static" and "Statistics collection" not in out + err  # no NNCF bars
    assert ("no int8 dot-product instructions" in err) == (cpu_has_int8_dot() is False)  # int8 gains little without them
    code, out, _ = cli(["info", str(tmp_path / "static")], monkeypatch, capsys)
    assert code == 0 and "int8 static weights" in out and "made for openvino" in out
    code, out, err = cli(["predict", str(tmp_path / "static"), "--input", str(texts), "--task", "ner"], monkeypatch, capsys)
    assert code == 0, err
    assert len(out.splitlines()) == len(CALIBRATION) and all("ner" in json.loads(line) for line in out.splitlines())
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nvery good music,pos\nweak ending and poor plot,neg\n")
    for runtime in ("openvino", "onnxruntime"):
        report = tmp_path / runtime
        args = [
            "eval",
            str(tmp_path / "static"),
            "--task",
            "sentiment",
            "--data",
            str(data),
            "--runtime",
            runtime,
            "--report-dir",
            str(report),
        ]
        code, out, err = cli(args, monkeypatch, capsys)
        assert code == 0, err
        assert "accuracy" in json.loads(next(report.glob("*.json")).read_text())
    (tmp_path / "blank.txt").write_text("\n  \n")
    blank = ["compress", str(chain), "--out", str(tmp_path / "x"), "--static", "--texts", str(tmp_path / "blank.txt")]
    code, _, err = cli(blank, monkeypatch, capsys)
    assert code == 2 and "blank.txt" in err and "no texts in the file" in err and not (tmp_path / "x").exists()
    code, _, err = cli(["compress", str(chain), "--out", str(tmp_path / "x"), "--static", "--no-int8"], monkeypatch, capsys)
    assert code == 2 and "--static is a kind of int8 weights" in err and not (tmp_path / "x").exists()
    code, _, err = cli(["predict", str(tmp_path / "static"), "--input", str(texts), "--runtime", "tflite"], monkeypatch, capsys)
    assert code == 2 and "unknown runtime 'tflite'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="runtime"):
        ServeSettings(chain=tmp_path / "static", runtime="tflite")  # type: ignore[arg-type]


def test_the_server_runs_a_static_export_on_openvino(static: Path) -> None:
    """``finechain serve`` on the static folder: by default what ``auto`` picks on this CPU (OpenVINO, what it was made
    for, where the CPU has int8 dot products), OpenVINO or ONNX Runtime when asked; the engine's answers either way."""
    import httpx

    from tests.test_serve import AUTH, Server, post

    texts = TEXTS[:3]
    here = auto_runtime("openvino", openvino=True, int8_dot=cpu_has_int8_dot())
    other = "onnxruntime" if here == "openvino" else "openvino"
    for runtime, backend in (("auto", f"{here} (int8 static)"), (other, f"{other} (int8 static)")):
        served = Server(static, "--runtime", runtime)
        try:
            answers = post(served, {"texts": texts, "tasks": ["sentiment", "ner"]}).json()["predictions"]
            about = httpx.get(f"{served.url}/v1/tasks", headers=AUTH).json()
        finally:
            served.stop()
        assert about["model"]["backend"] == backend
        engine = Engine(ExportedChain(static, runtime=runtime))
        for mine, theirs in zip(engine.predict(texts, ["sentiment", "ner"]), answers, strict=True):
            assert mine["sentiment"].label == theirs["sentiment"]["label"]
            assert mine["sentiment"].score == pytest.approx(theirs["sentiment"]["score"], abs=1e-4)
            assert [(e.type, e.start, e.end) for e in mine["ner"].entities] == [
                (e["type"], e["start"], e["end"]) for e in theirs["ner"]["entities"]
            ]
