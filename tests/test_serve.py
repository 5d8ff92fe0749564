"""`finechain serve` as a real server on loopback: REST and gRPC on one batcher, client mistakes as JSON 4xx, API keys,
backpressure, deadlines, metrics, hot reload, graceful shutdown, the page."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import available as browser_available

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0"
KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``finechain serve`` in a subprocess, stopped with SIGTERM."""

    def __init__(self, chain: Path, *options: str, grpc: bool = False, extra_env: dict[str, str] | None = None) -> None:
        self.port, self.grpc_port = free_port(), free_port() if grpc else None
        command = [sys.executable, "-m", "finechain", "serve", str(chain), "--port", str(self.port), *options]
        if grpc:
            command += ["--grpc-port", str(self.grpc_port)]
        env = (
            {**os.environ, "HF_HUB_OFFLINE": "1", "FINECHAIN_API_KEY": KEY}
            if "--no-key" not in options
            else {**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        env.update(extra_env or {})
        command = [c for c in command if c != "--no-key"]
        # logs go to a file, not a pipe: a pipe nobody reads fills up (64 KiB of access logs) and then blocks the server
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (open for the life of the server; closed with the process)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.output()[-3000:])
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not become ready")

    def output(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return self.process.returncode, self.output()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path_factory.mktemp("serve") / "chain")
    server = Server(
        chain, "--cors-origin", "https://example.org", "--max-texts", "8", "--max-chars", "500", "--max-body-bytes", "4096", grpc=True
    )
    yield server
    code, err = server.stop()
    assert code == 0, err[-2000:]


ANSWERED = 'finechain_requests_total{method="POST",route="/v1/predict",status="200"}'


def _metric(exposition: str, sample: str) -> float:
    """The value of ``sample`` (a metric name with its labels, as written) in a Prometheus exposition, summed over its
    lines (0 when absent)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(f"{sample} "))


def post(server: Server, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict", json=body, headers=AUTH if headers is None else headers, timeout=30, **kw)


def test_predict_answers_every_task_in_one_pass(served: Server) -> None:
    response = post(served, {"texts": ["very good music", "alice visited new york"]})
    assert response.status_code == 200, response.text
    body = response.json()
    first, second = body["predictions"]
    assert set(first) == {"sentiment", "sentiment_lora", "tags", "stars", "ner"}
    assert first["sentiment"]["label"] == "pos" and set(first["sentiment"]["scores"]) == {"neg", "pos"}
    assert [(e["text"], e["type"]) for e in second["ner"]["entities"]] == [("alice", "PER"), ("new york", "LOC")]
    assert {"prepare_ms", "queue_ms", "forward_ms", "decode_ms", "total_ms", "batch_rows", "batch_requests"} <= set(body["timings"])
    subset = post(served, {"texts": ["good"], "tasks": ["stars"]}).json()["predictions"][0]
    assert set(subset) == {"stars"} and isinstance(subset["stars"]["value"], float)
    words = post(served, {"texts": [["alice", "met", "bob"]], "tasks": ["ner"]}).json()["predictions"][0]["ner"]
    assert {"first_word", "last_word"} <= set(words["entities"][0])
    assert response.headers["x-request-id"]


def test_an_exported_folder_serves_the_same_answers(tmp_path: Path) -> None:
    """``finechain serve`` on ``finechain export``'s folder: ONNX Runtime behind the same API, the chain's answers."""
    from finechain import Chain
    from finechain.export.onnx import export_onnx

    export_onnx(RELEASE / "frozen", tmp_path / "onnx")
    texts = ["very good music", "alice visited new york", "bob met carol in paris today"]
    exported = Server(tmp_path / "onnx")
    try:
        theirs = post(exported, {"texts": texts}).json()["predictions"]
        words = post(exported, {"texts": [["alice", "met", "bob"]], "tasks": ["ner"]}).json()["predictions"][0]["ner"]
        about = httpx.get(f"{exported.url}/v1/tasks", headers=AUTH).json()
    finally:
        exported.stop()
    assert about["model"]["backend"] == "onnxruntime (fp32)" and about["model"]["split"] == 2
    assert [t["name"] for t in about["tasks"]] == ["sentiment", "sentiment_lora", "tags", "stars", "ner"]
    chain = Chain.from_pretrained(RELEASE / "frozen")
    chain.precision = "fp32"  # as exported
    for mine, other in zip(chain.predict(texts), theirs, strict=True):
        assert list(mine) == list(other)
        assert [(e.type, e.start, e.end) for e in mine["ner"].entities] == [
            (e["type"], e["start"], e["end"]) for e in other["ner"]["entities"]
        ]
        assert mine["sentiment"].label == other["sentiment"]["label"]
        assert mine["sentiment"].score == pytest.approx(other["sentiment"]["score"], abs=1e-4)
        assert mine["stars"].value == pytest.approx(other["stars"]["value"], abs=1e-4)
    expected = chain.predict([["alice", "met", "bob"]], ["ner"])[0]["ner"].to_dict()["entities"]
    key = ("type", "first_word", "last_word")
    assert [tuple(e[k] for k in key) for e in words["entities"]] == [tuple(e[k] for k in key) for e in expected] != []


def test_tasks_health_and_readiness(served: Server) -> None:
    tasks = httpx.get(f"{served.url}/v1/tasks", headers=AUTH).json()
    assert [t["name"] for t in tasks["tasks"]] == ["sentiment", "sentiment_lora", "tags", "stars", "ner"]
    assert tasks["tasks"][4]["type"] == "tagging" and tasks["model"]["split"] == 2 and tasks["model"]["backend"] == "pytorch"
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served.url}/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "field"),
    [
        ({"texts": ["a"]}, {}, 401, "unauthorized", None),
        ({"texts": ["a"]}, {"Authorization": "Bearer wrong-key-000"}, 401, "unauthorized", None),
        ({"texts": []}, None, 422, "invalid_request", "texts"),
        ({"texts": "not a list"}, None, 422, "invalid_request", "texts"),
        ({"texts": [1, 2]}, None, 422, "invalid_request", "texts"),
        ({"texts": ["a"], "tasks": ["nope"]}, None, 422, "invalid_request", "tasks"),
        ({"texts": ["a"], "tasks": []}, None, 422, "invalid_request", "tasks"),
        ({"texts": ["a"], "extra": 1}, None, 422, "invalid_request", "extra"),
        ({"texts": ["a"] * 9}, None, 413, "too_many_texts", "texts"),
        ({"texts": ["a", "b" * 501]}, None, 413, "text_too_long", "texts[1]"),
        ({"texts": ["a", ["x", 3]]}, None, 422, "invalid_request", None),
        ({"texts": ["a"], "timeout_ms": -1}, None, 422, "invalid_request", "timeout_ms"),
        ({"texts": ["a"], "timeout_ms": 0.5}, None, 422, "invalid_request", "timeout_ms"),
    ],
)
def test_client_mistakes_are_json_4xx(
    served: Server, body: Any, headers: dict[str, str] | None, status: int, code: str, field: str | None
) -> None:
    response = post(served, body, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status and "Traceback" not in response.text
    if field is not None:
        assert error["field"].startswith(field), error


@pytest.mark.parametrize(
    ("route", "body", "message", "field", "fix"),
    [
        ("predict", {"text": ["a"]}, "unknown field 'text'", "text", "did you mean 'texts'?"),
        ("predict", {"texts": ["a"], "task": ["x"]}, "unknown field 'task'", "task", "did you mean 'tasks'?"),
        ("predict", {"texts": ["a"], "extra": 1}, "unknown field 'extra'", "extra", "the fields are texts, tasks, timeout_ms"),
        ("flows/f", {"texts": ["a"], "tasks": ["x"]}, "unknown field 'tasks'", "tasks", "the fields are texts, timeout_ms"),
        ("predict", {"texts": [["a", 3]]}, "Input should be a valid string", "texts[0][1]", "see the schema"),  # the word-list form
        ("predict", {"texts": ["a", None]}, "Input should be a valid string", "texts[1]", "see the schema"),
        ("predict", b'{"texts": ["a"],}', "invalid JSON at character 16: Expecting property name", None, 'send {"texts": [...]}'),
        ("predict", b"", "the request has no body", None, 'send {"texts": [...]}'),
    ],
)
def test_a_body_that_does_not_fit_says_which_field_and_how(
    served: Server, route: str, body: Any, message: str, field: str | None, fix: str
) -> None:
    """A misspelt field is named with the likely one; a field of several forms (texts: strings or word lists) points
    at the item inside, without pydantic's form tags; bad JSON says where it stopped."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(f"{served.url}/v1/{route}", content=raw, headers=headers, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith(message) and error.get("field") == field and error["fix"].startswith(fix), error


def test_a_port_in_use_is_a_one_line_error(served: Server) -> None:
    """A second server on a taken port (REST or gRPC) stops at once with one line naming the port and the option to
    change, before loading its chain; uvicorn used to exit from inside its event loop with a traceback, and gRPC's
    shared-port option let a second server take half of the first one's calls."""
    chain = served.process.args[4]  # the served chain folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for options, message in [
        (["--port", str(served.port)], f"error: port {served.port} on 127.0.0.1 is taken (fix: choose another --port"),
        (["--port", str(free_port()), "--grpc-port", str(served.grpc_port)], f"error: port {served.grpc_port} on 127.0.0.1 is taken"),
    ]:
        argv = [sys.executable, "-m", "finechain", "serve", chain, *options]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert httpx.get(f"{served.url}/readyz", timeout=5).status_code == 200  # the first server is untouched


def test_raw_bodies_that_are_not_requests(served: Server) -> None:
    cases = {
        b"{not json": {422},
        b'{"texts": ["caf\xe9"]}': {400, 422},  # not UTF-8
        b"": {422},
        b"[]": {422},
        b'{"texts": ["' + b"x" * 5000 + b'"]}': {413},  # over --max-body-bytes
    }
    for raw, statuses in cases.items():
        response = httpx.post(f"{served.url}/v1/predict", content=raw, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
        assert response.status_code in statuses, (raw[:30], response.text)
        assert "error" in response.json()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        yield b'{"texts": ["'
        for _ in range(20):
            yield b"y" * 400
        yield b'"]}'

    response = httpx.post(f"{served.url}/v1/predict", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    missing = httpx.get(f"{served.url}/v2/nothing", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{served.url}/v1/predict", headers=AUTH).status_code == 405


def test_requests_from_many_clients_share_forward_passes(served: Server) -> None:
    texts = [f"the plot was {w} and the music {v}" for w in ("good", "awful", "fine", "weak") for v in ("superb", "poor", "lovely", "bad")]
    alone = {t: post(served, {"texts": [t]}).json()["predictions"][0] for t in texts[:4]}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda t: post(served, {"texts": [t]}), texts * 3))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["timings"]["batch_requests"] for r in responses) > 1  # several clients in one pass
    for text, response in zip(texts * 3, responses, strict=True):
        if text in alone:
            got, want = response.json()["predictions"][0], alone[text]
            assert got["sentiment"]["label"] == want["sentiment"]["label"]
            assert got["sentiment"]["score"] == pytest.approx(want["sentiment"]["score"], abs=1e-5)


def test_deadlines_and_metrics(served: Server) -> None:
    late = post(served, {"texts": ["good"], "timeout_ms": 1})  # a deadline the request set itself: 408, the client's to change
    assert late.status_code == 408 and late.json()["error"]["code"] == "deadline_exceeded" and late.headers["retry-after"] == "1"
    assert httpx.get(f"{served.url}/metrics").status_code == 401  # metrics need the key too
    text = httpx.get(f"{served.url}/metrics", headers=AUTH).text
    for name in (
        'finechain_requests_total{method="POST",route="/v1/predict",status="200"}',
        "finechain_request_duration_seconds_bucket",
        "finechain_queue_wait_seconds_bucket",
        "finechain_batch_size_bucket",
        "finechain_batch_tokens_bucket",
        'finechain_task_compute_seconds_total{task="ner"}',
        'finechain_predictions_total{label="pos",task="sentiment"}',
        "finechain_queue_depth",
        "finechain_ready 1.0",
    ):
        assert name in text, name
    assert re.search(r'finechain_predictions_total\{label="[A-Z]+",task="ner"\} [1-9]', text)  # entities counted by type


def test_cors_preflight(served: Server) -> None:
    headers = {
        "Origin": "https://example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    allowed = httpx.options(f"{served.url}/v1/predict", headers=headers)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://example.org"
    other = httpx.options(f"{served.url}/v1/predict", headers={**headers, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_grpc_answers_like_rest(served: Server) -> None:
    import grpc

    from finechain.serve.proto import finechain_pb2 as pb
    from finechain.serve.proto import finechain_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.ChainStub(channel)
        metadata = (("authorization", f"Bearer {KEY}"),)
        reply = stub.Predict(pb.PredictRequest(texts=["very good music", "alice visited new york"]), metadata=metadata, timeout=30)
        rest = post(served, {"texts": ["very good music", "alice visited new york"]}).json()["predictions"]
        assert reply.predictions[0].tasks["sentiment"].classification.label == rest[0]["sentiment"]["label"]
        assert reply.predictions[0].tasks["stars"].regression.value == pytest.approx(rest[0]["stars"]["value"], abs=1e-5)
        entities = [(e.text, e.type, e.start, e.end) for e in reply.predictions[1].tasks["ner"].tagging.entities]
        assert entities == [(e["text"], e["type"], e["start"], e["end"]) for e in rest[1]["ner"]["entities"]]
        assert set(reply.predictions[0].tasks["tags"].multilabel.scores) == {"long", "negative", "positive"}
        words = stub.Predict(pb.PredictRequest(words=[pb.Words(words=["alice", "met", "bob"])], tasks=["ner"]), metadata=metadata)
        assert words.predictions[0].tasks["ner"].tagging.entities[0].HasField("first_word")
        tasks = stub.Tasks(pb.TasksRequest(), metadata=metadata)
        assert [t.name for t in tasks.tasks][:2] == ["sentiment", "sentiment_lora"] and tasks.split == 2
        for request, code, details in (
            (
                pb.PredictRequest(texts=["a"], tasks=["nope"]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "tasks: unknown task(s) ['nope'] (fix: this chain has",
            ),
            (pb.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "texts: texts must be a non-empty list (fix: send at least one text)"),
            (pb.PredictRequest(texts=["a"] * 9), grpc.StatusCode.RESOURCE_EXHAUSTED, "texts: 9 texts; at most 8 per request (fix: split"),
        ):
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, metadata=metadata)
            assert error.value.code() == code and (error.value.details() or "").startswith(details), error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(pb.PredictRequest(texts=["a"]))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_openapi_schema_documents_the_api(served: Server) -> None:
    schema = httpx.get(f"{served.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/tasks", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "401", "408", "413", "422", "429", "503"} <= set(responses)


def test_several_workers_answer_and_count_together(tmp_path: Path) -> None:
    """``--workers 2``: two processes on one port, each with its own chain and batcher and half the cores (not every
    core each, fighting over them); /metrics adds both up. The first process only hands out connections: no PyTorch,
    no model in it."""
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    scratch = tmp_path / "tmp"  # the server's temporary folders: its workers' metric files, gone once it stops
    scratch.mkdir()
    server = Server(chain, "--workers", "2", "--no-access-log", extra_env={"TMPDIR": str(scratch)})
    try:
        assert [p.name[:18] for p in scratch.glob("finechain-*")] == ["finechain-metrics-"]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: post(server, {"texts": [f"text {i}"], "tasks": ["stars"]}), range(16)))
        assert [a.status_code for a in answers] == [200] * 16
        assert httpx.get(f"{server.url}/v1/tasks", headers=AUTH).json()["model"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
        resident = next(line for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
        assert int(resident.split()[1]) < 200_000, resident  # kB: importing PyTorch alone takes 400 MB
        workers = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        environments = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in workers]
        assert sum(b"ONEDNN_PRIMITIVE_CACHE_CAPACITY=16" in e for e in environments) >= 2  # bounded: memory levels off
        assert _metric(httpx.get(f"{server.url}/metrics", headers=AUTH).text, ANSWERED) == 16
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]
    assert list(scratch.glob("finechain-*")) == []  # (PyTorch's compile cache, torchinductor_*, is meant to stay)


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    server = Server(chain, "--no-key", "--queue-size", "1", "--max-batch-size", "1", "--max-wait-ms", "0")
    try:
        long = " ".join(["alice visited new york and"] * 12)
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(lambda _: post(server, {"texts": [long] * 4}, headers={}), range(48)))
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 429} and 429 in statuses and 200 in statuses
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "overloaded"
    finally:
        server.stop()


def test_hot_reload_keeps_serving_and_reports_failures(tmp_path: Path) -> None:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    server = Server(chain, "--no-key", "--reload-check-s", "0.2")
    try:
        before = httpx.get(f"{server.url}/v1/tasks").json()
        manifest = json.loads((chain / "finechain.json").read_text())
        # what add-task does: weights first, then a new manifest (here: the sentiment task copied as "mood")
        shutil.copytree(chain / "tasks" / "sentiment", chain / "tasks" / "mood")
        manifest["tasks"]["mood"] = manifest["tasks"]["sentiment"]
        statuses = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stream = [pool.submit(post, server, {"texts": ["good film"]}, {}) for _ in range(40)]
            (chain / "finechain.json.new").write_text(json.dumps(manifest))
            os.replace(chain / "finechain.json.new", chain / "finechain.json")
            statuses = [f.result().status_code for f in stream]
        assert statuses == [200] * 40  # nothing dropped while the new version loaded
        deadline = time.monotonic() + 30
        while "mood" not in [t["name"] for t in httpx.get(f"{server.url}/v1/tasks").json()["tasks"]]:
            assert time.monotonic() < deadline, "the new task never appeared"
            time.sleep(0.2)
        after = httpx.get(f"{server.url}/v1/tasks").json()
        assert after["model"]["version"] != before["model"]["version"]
        assert post(server, {"texts": ["good film"], "tasks": ["mood"]}, {}).status_code == 200
        (chain / "finechain.json").write_text('{"format": 99}')  # a broken version: the old one keeps serving
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz").json().get("last_reload_error") is None:
            assert time.monotonic() < deadline, "the failed reload was not reported"
            time.sleep(0.2)
        assert "newer than this finechain reads" in httpx.get(f"{server.url}/readyz").json()["last_reload_error"]
        assert post(server, {"texts": ["good film"], "tasks": ["mood"]}, {}).status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'finechain_reloads_total{outcome="loaded"} 1.0' in metrics and 'finechain_reloads_total{outcome="failed"}' in metrics
    finally:
        server.stop()


def _arrived(server: Server) -> float:
    """Predict requests the server has taken in: waiting for a forward pass, or answered."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return _metric(metrics, "finechain_queue_depth") + _metric(metrics, ANSWERED)


def test_sigterm_finishes_the_requests_in_flight(tmp_path: Path) -> None:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    server = Server(chain, "--no-key", "--max-batch-size", "4")
    long = " ".join(["alice visited new york and"] * 12)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, server, {"texts": [long] * 8}, {}) for _ in range(8)]
        deadline = time.monotonic() + 30
        while _arrived(server) < 8 and time.monotonic() < deadline:  # every request taken in (a busy machine: not at once)
            time.sleep(0.02)
        code, err = server.stop()
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 8, err[-2000:]
    assert code == 0 and "Traceback" not in err
    access = [json.loads(line) for line in err.splitlines() if line.startswith('{"time"')]
    assert sum(1 for a in access if a["path"] == "/v1/predict" and a["status"] == 200) == 8


def test_a_chain_that_does_not_load_is_a_one_line_error(tmp_path: Path) -> None:
    chain = shutil.copytree(RELEASE / "frozen", tmp_path / "chain")
    (chain / "tasks" / "ner" / "head.safetensors").write_bytes(b"")
    for workers in ("1", "2"):  # with several workers the chain is checked in a child process: the same one line
        done = subprocess.run(
            [sys.executable, "-m", "finechain", "serve", str(chain), "--port", str(free_port()), "--workers", workers],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "head.safetensors" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "finechain", "serve", str(chain), "--max-batch-size", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and re.search(r"--max-batch-size: Input should be greater than or equal to 1", done.stderr)


def test_the_page_is_self_contained(served: Server) -> None:
    page = httpx.get(served.url).text
    assert "<textarea" in page and "/v1/predict" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no external assets


@pytest.mark.skipif(
    not browser_available() and not os.environ.get("FINECHAIN_REQUIRE_BROWSER"), reason="chromium and chromedriver are not installed"
)
def test_the_page_in_a_real_browser(served: Server, tmp_path: Path) -> None:
    """Type two texts, press Predict: every task's answer shows, labels as bars, entities highlighted in the text."""
    from tests.browser import ask, open_browser, screenshot

    browser = open_browser()
    try:
        browser.get(served.url)
        browser.execute_script(f"sessionStorage.setItem('finechain-key', '{KEY}')")
        shown = ask(browser, served.url, "very good music\nalice visited new york")
        assert shown["error"] == "" and shown["texts"] == 2
        assert shown["tasks"] == ["sentiment", "sentiment_lora", "tags", "stars", "ner"]
        assert ("alice", "PER") in shown["marks"] and ("new york", "LOC") in shown["marks"]
        assert all(abs(share - number) < 0.02 for number, share in shown["drawn"])  # each bar is as long as its score
        assert shown["bars"] >= 8 and re.search(r"2 texts in \d+ ms \(server", shown["timings"])
        assert "5 tasks sharing 2 of 4 layers" in shown["about"]
        assert screenshot(browser, tmp_path / "page.png").stat().st_size > 10_000
    finally:
        browser.quit()


def test_schemathesis_finds_no_server_error(served: Server) -> None:
    """Generated requests from the OpenAPI schema, valid and invalid (wrong types, missing fields, odd strings): never a 5xx."""
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{served.url}/openapi.json",
            "--checks", "not_a_server_error", "--header", f"Authorization: Bearer {KEY}",
            "--max-examples", "40", "--seed", "13", "--generation-deterministic", "--request-timeout", "30",
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_the_committed_grpc_stubs_match_the_proto(tmp_path: Path) -> None:
    from grpc_tools import grpc_version, protoc

    source = Path(__file__).resolve().parents[1] / "src"
    stub = (source / "finechain/serve/proto/finechain_pb2_grpc.py").read_text()
    made_by = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", stub)
    assert made_by and made_by[1] == grpc_version.VERSION, (
        f"the stubs were made by grpcio-tools {made_by and made_by[1]}, this is {grpc_version.VERSION}: install the "
        "version pinned in pyproject.toml (pip install -e '.[dev]'), which writes its own version into the stubs"
    )
    proto = "finechain/serve/proto/finechain.proto"
    assert protoc.main(["protoc", f"-I{source}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", proto]) == 0
    for name in ("finechain_pb2.py", "finechain_pb2_grpc.py"):
        fresh = (tmp_path / "finechain/serve/proto" / name).read_text()
        assert fresh == (source / "finechain/serve/proto" / name).read_text(), f"{name} is stale: run scripts/make-grpc-stubs.sh"
