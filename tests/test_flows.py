"""Flows: routing with a default route and a low-confidence fallback, span edges, another chain's stage, one trunk
pass per chain, evaluation end to end, and every bad flow a one-line error at its YAML line."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from unittest.mock import ANY

import pytest

from finechain import Chain
from finechain.errors import FinechainError
from finechain.flows import SpanAnswer
from tests.conftest import CITIES, FILLER, NAMES, NEGATIVE, POSITIVE, TOPICS, ner_sentences, write_conll
from tests.conftest import run_cli as cli

JOINT = "sharing: joint\njoint: {epochs: 8, trunk_learning_rate: 0.001, refine_epochs: 1}\n"
TRAINING = "training: {epochs: 6, batch_size: 16, learning_rate: 0.003, head_learning_rate: 0.01, min_steps: 0, patience: 0}"


def combo_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Texts with a topic word and a sentiment cue: both labels on every row."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        mood = "pos" if (i // 3) % 2 == 0 else "neg"
        words = [rng.choice(TOPICS[topic]), rng.choice(POSITIVE if mood == "pos" else NEGATIVE), rng.choice(FILLER)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "topic": topic, "mood": mood})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FLOWS = """
flows:
  - name: triage
    stages:
      - task: topic
      - task: mood
        after: topic
        when: {labels: [sport]}
      - name: general
        task: mood
        after: topic
        otherwise: true
      - name: unsure
        task: other_mood
        chain: other
        after: topic
        when: {score_below: 0.999}
  - name: sport_names
    stages:
      - task: topic
      - task: ner
        after: topic
        when: {labels: [sport]}
  - name: people
    stages:
      - task: ner
      - task: mood
        after: ner
        input: marked
        types: [PER]
"""


@pytest.fixture(scope="module")
def trained(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two chains: 'other' (one mood task) and 'c' (topic, mood, ner) whose flows route, read spans and use 'other'."""
    from finechain.jobs.training import train_chain

    root = tmp_path_factory.mktemp("flows")
    write_jsonl(root / "combo.jsonl", combo_rows(240, 1))
    write_jsonl(root / "combo_test.jsonl", combo_rows(30, 2))
    write_conll(root / "n.conll", ner_sentences(120, 1))
    head = f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n{TRAINING}\n"
    (root / "other.yaml").write_text(head + "tasks:\n  - {name: other_mood, train: combo.jsonl, label_column: mood}\n")
    train_chain(root / "other.yaml", root / "other", progress=False)
    (root / "chain.yaml").write_text(
        head + JOINT + "tasks:\n  - {name: topic, train: combo.jsonl, label_column: topic}\n"
        "  - {name: mood, train: combo.jsonl, label_column: mood}\n  - {name: ner, type: tagging, train: n.conll}\n" + FLOWS
    )
    train_chain(root / "chain.yaml", root / "c", progress=False)
    return root


def test_routing_default_route_and_fallback_in_one_pass(trained: Path) -> None:
    chain = Chain.from_pretrained(trained / "c")
    assert sorted(chain.flows) == ["people", "sport_names", "triage"]
    assert chain.flows["triage"].stages[3].chain == "../other"  # kept relative: the two folders move together
    flow = chain.flow("triage")
    trunk, tails = [], []
    runner = chain.engine.runner
    run, run_kept = runner.run, runner.run_kept
    runner.run = lambda *a, **k: trunk.append(sorted(a[2])) or run(*a, **k)  # type: ignore[method-assign]
    runner.run_kept = lambda h, wanted, *a, **k: tails.append(dict(wanted)) or run_kept(h, wanted, *a, **k)  # type: ignore[method-assign]
    texts = ["match good the", "bank awful film", "phone superb plot", "goal dreadful story"]
    results = flow.run(texts)
    assert trunk == [["topic"]]  # this chain: one trunk pass, with the stage every text reads
    sport = [i for i, r in enumerate(results) if r.answers["topic"].label == "sport"]
    assert 0 < len(sport) < len(texts)
    assert [list(t) for t in tails] == [["mood"], ["mood"]]  # then each route's branch on the kept states...
    assert [len(t["mood"] or texts) for t in tails] == [len(sport), len(texts) - len(sport)]  # ...of its texts only
    for result in results:
        topic = result.answers["topic"]
        assert result.path[0] == "topic" and set(result.times_ms) == {"topic", "mood", "general", "unsure"}
        routed = {"mood"} if topic.label == "sport" else {"general"}
        assert routed <= set(result.path) and not ({"mood", "general"} - routed) & set(result.path)
        assert ("unsure" in result.path) == (topic.score < 0.999)
        if "unsure" in result.path:
            assert result.answers["unsure"].label in {"pos", "neg"}  # answered by the other chain
    assert [r.answers["topic"].label for r in results][:3] == ["sport", "money", "tech"]
    assert json.loads(json.dumps(results[0].to_dict()))["path"] == results[0].path


def close(a: object, b: object) -> bool:
    """Equal, numbers within float32 noise, through nested lists and dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 + 1e-4 * abs(b)
    return a == b or b is ANY


def test_kept_states_answer_as_a_full_pass_would(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain.from_pretrained(trained / "c")
    long_sport = " ".join(["match alice good the"] * 20)  # past max_length (32): its routed tagging reads windows
    texts = ["match good the", "bank awful film", "alice match superb", long_sport, "goal bob dreadful story"]
    kept = chain.flow("sport_names").run(texts) + chain.flow("triage").run(texts)
    monkeypatch.setattr(type(chain.engine), "keeps_states", property(lambda self: False))
    again = chain.flow("sport_names").run(texts) + chain.flow("triage").run(texts)
    assert [r.path for r in kept] == [r.path for r in again] and "ner" in kept[3].path
    for first, second in zip(kept, again, strict=True):
        for key, answer in first.answers.items():
            assert close(answer.to_dict(), second.answers[key].to_dict()), key
    direct = chain.predict(texts, ["ner"])
    assert [e.text for e in kept[3].answers["ner"].entities] == [e.text for e in direct[3]["ner"].entities]


def test_a_long_input_runs_a_block_of_characters_at_a_time(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long text keeps the trunk states of all its windows: a flow runs at most ``block_chars`` characters at a
    time (and ``block`` texts), with the answers of one block."""
    from finechain.flows.flow import Flow

    chain = Chain.from_pretrained(trained / "c")
    long_sport = " ".join(["match alice good the"] * 20)  # 419 characters, past max_length (32)
    texts = ["match good the", long_sport, "alice match superb", long_sport, "goal bob dreadful story"]
    whole = chain.flow("sport_names").run(texts)
    blocks: list[int] = []
    run_block = Flow._run_block
    monkeypatch.setattr(Flow, "_run_block", lambda self, part, times: blocks.append(len(part)) or run_block(self, part, times))
    monkeypatch.setattr(Flow, "block_chars", 440)
    blocked = chain.flow("sport_names").run(texts)
    assert blocks == [2, 2, 1]  # 14 + 419; 18 + 419; 23
    assert [r.path for r in blocked] == [r.path for r in whole] and "ner" in blocked[1].path
    for first, second in zip(blocked, whole, strict=True):
        assert first.answers.keys() == second.answers.keys()
        assert all(close(answer.to_dict(), second.answers[key].to_dict()) for key, answer in first.answers.items())
    monkeypatch.setattr(Flow, "block", 1)
    assert [r.path for r in chain.flow("sport_names").run(texts)] == [r.path for r in whole] and blocks[3:] == [1] * 5


def test_span_edges_run_on_each_marked_span(trained: Path) -> None:
    chain = Chain.from_pretrained(trained / "c")
    results = chain.flow("people").run(["alice visited paris", "the film was good"])
    spans = results[0].answers["mood"]
    assert isinstance(spans, list) and [a.span.type for a in spans] == ["PER"]
    assert isinstance(spans[0], SpanAnswer) and spans[0].span.text == "alice"
    assert results[1].answers["mood"] == [] and results[1].path == ["ner", "mood"]
    assert results[0].to_dict()["answers"]["mood"][0]["span"]["text"] == "alice"


def test_cli_predict_and_eval_a_flow(trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (trained / "in.txt").write_text("match good the\nbank awful film\n")
    code, out, err = cli(["predict", str(trained / "c"), "--flow", "triage", "--input", str(trained / "in.txt")], monkeypatch, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["match good the", "bank awful film"] and records[0]["path"][0] == "topic"
    code, out, err = cli(["eval", str(trained / "c"), "--flow", "triage", "--data", str(trained / "combo_test.jsonl")], monkeypatch, capsys)
    assert code == 0 and "exact_match" in out, err
    from finechain.jobs.evaluation import evaluate_flow

    scores = evaluate_flow(trained / "c", "triage", trained / "combo_test.jsonl")
    assert scores["n"] == 30 and scores["stages"]["topic"]["accuracy"] >= 0.9
    mood_ok = sum(scores["stages"][k]["accuracy"] * scores["stages"][k]["n"] for k in ("mood", "general"))
    assert scores["exact_match"] <= min(scores["stages"]["topic"]["accuracy"], mood_ok / 30) + 1e-9
    code, out, err = cli(["info", str(trained / "c")], monkeypatch, capsys)
    assert code == 0 and "flow triage: topic; mood after topic when label in sport; general (mood) after topic otherwise;" in out, out
    assert "flow people: ner; mood on each marked span of ner of types PER" in out
    for args, message in [
        (["predict", str(trained / "c"), "--flow", "nope", "--input", str(trained / "in.txt")], "unknown flow 'nope'"),
        (["predict", str(trained / "c"), "--flow", "triage", "--task", "topic"], "--flow runs every task"),
        (["eval", str(trained / "c"), "--data", str(trained / "combo_test.jsonl")], "give --task or --flow"),
        (
            ["eval", str(trained / "c"), "--flow", "triage", "--data", str(trained / "in.txt")],
            "in.txt:1: stage 'topic': text column 'text' not found",
        ),
    ]:
        code, _, err = cli(args, monkeypatch, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


BAD_FLOWS = [
    ("      - {task: mood, after: nope}", "reads 'nope', which is not a stage"),
    ("      - {task: mood, after: mood}", "has a cycle: mood -> mood"),
    ("      - {task: mood, after: topic, when: {labels: [sports]}}", "routes on label 'sports', which 'topic' does not have"),
    ("      - {task: mood, after: topic, input: span}", "reads spans of 'topic', which produces none"),
    ("      - {task: mood, after: ner, when: {labels: [PER]}}", "a condition on 'ner', which produces spans"),
    ("      - {task: mood, after: ner, input: span, types: [ORG]}", "keeps spans of type 'ORG', which 'ner' does not find"),
    ("      - {task: nope, after: topic}", "unknown task 'nope' in flow 'f'"),
    ("      - {task: other_mood, chain: missing, after: topic}", "not a chain folder"),
    ("      - {task: mood, after: topic, when: {labels: [sport]}, otherwise: true}", "has both 'when' and 'otherwise'"),
    ("      - {task: topic, after: ner}", "stage 'topic' appears twice in flow 'f'"),  # at the second one's line
    ("      - {task: mood, when: {labels: [sport]}}", "stage 'mood' has 'when' but reads no stage"),
    ("      - {task: mood, input: span}", "stage 'mood' reads spans but no stage"),
    ("      - {task: mood, after: ner, types: [PER]}", "stage 'mood' has 'types' but reads the text"),
    ("      - {task: mood, after: ner, input: span, when: {labels: [PER]}}", "stage 'mood' reads spans: it runs on each one"),
    ("      - {task: mood, after: ner, input: span, when: {labels: [PER]}, train_on: predicted}", "'train_on' chooses rows of routed"),
    ("      - {task: other_mood, chain: other, after: topic, when: {labels: [sport]}, train_on: predicted}", "it is trained there"),
    (
        "      - {name: ext, task: other_mood, chain: other, after: topic}\n"
        "      - {task: mood, after: ext, when: {labels: [pos]}, train_on: gold}",
        "trains on gold routes of 'ext', a task of another chain",
    ),
    ("      - {task: mood, allow: {sport: [pos]}}", "stage 'mood' has 'allow' but reads no stage"),
    ("      - {task: mood, after: ner, input: span, allow: {PER: [pos]}}", "reads spans: 'allow' restricts a stage that reads the text"),
    ("      - {task: mood, after: topic, allow: {}}", "stage 'mood' allows nothing"),
    ("      - {task: mood, after: topic, allow: {sports: [pos]}}", "allows labels after 'sports', which 'topic' does not have"),
    ("      - {task: mood, after: topic, allow: {sport: [great]}}", "allows 'great' after 'sport', which 'mood' does not answer"),
    ("      - {name: n2, task: ner, after: topic, allow: {sport: [ORG]}}", "allows 'ORG' after 'sport', which 'ner' does not answer"),
    ("      - {task: mood, after: topic, allow: {sport: []}}", "allows no label after 'sport'"),
    ("      - {task: mood, after: ner, allow: {PER: [pos]}}", "allows labels by the label of 'ner', whose answers have none"),
    (
        "      - {name: n2, task: other_mood, chain: other, after: topic, allow: seen}",
        "'allow: seen' but it or 'topic' runs a task of another",
    ),
]


@pytest.mark.parametrize(("stage", "message"), BAD_FLOWS)
def test_bad_flows_are_one_line_errors_at_their_line(
    trained: Path, stage: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = (trained / "chain.yaml").read_text().split("flows:")[0].splitlines()[:3]
    body = "\n".join(spec) + "\ntasks:\n  - {name: topic, train: combo.jsonl, label_column: topic}\n"
    body += "  - {name: mood, train: combo.jsonl, label_column: mood}\n  - {name: ner, type: tagging, train: n.conll}\n"
    body += f"flows:\n  - name: f\n    stages:\n      - task: topic\n{stage}\n      - task: ner\n"
    text = body.splitlines()
    (trained / "bad.yaml").write_text(body)
    code, _, err = cli(["check", str(trained / "bad.yaml")], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    expected = next(i for i, row in enumerate(text, 1) if row == stage.splitlines()[-1])  # a case's last stage is the bad one
    assert f"bad.yaml:{expected}" in err, err
    with pytest.raises(FinechainError):
        Chain.from_pretrained(trained / "c").add_flow({"name": "g", "stages": [{"task": "topic"}, {"task": "mood", "after": "ghost"}]})


def test_the_server_runs_flows_through_its_batcher(trained: Path) -> None:
    import grpc
    import httpx

    from finechain.serve.proto import finechain_pb2 as pb
    from finechain.serve.proto import finechain_pb2_grpc as pb_grpc
    from tests.test_serve import AUTH, Server

    server = Server(trained / "c", grpc=True)
    try:
        texts = ["match good the", "bank awful film"]
        response = httpx.post(f"{server.url}/v1/flows/triage", json={"texts": texts}, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        served = response.json()["results"]
        local = [r.to_dict() for r in Chain.from_pretrained(trained / "c").flow("triage").run(texts)]
        assert [r["path"] for r in served] == [r["path"] for r in local]
        assert [r["answers"]["topic"]["label"] for r in served] == [r["answers"]["topic"]["label"] for r in local]
        listed = httpx.get(f"{server.url}/v1/flows", headers=AUTH, timeout=10).json()["flows"]
        assert [f["name"] for f in listed] == ["triage", "sport_names", "people"]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:  # the same over gRPC
            stub, metadata = pb_grpc.ChainStub(channel), tuple((k.lower(), v) for k, v in AUTH.items())
            reply = stub.RunFlow(pb.FlowRequest(name="triage", texts=texts), metadata=metadata, timeout=30)
            assert [list(r.path) for r in reply.results] == [r["path"] for r in served] and reply.version
            topic = reply.results[0].answers["topic"].answer.classification
            assert topic.label == served[0]["answers"]["topic"]["label"] and set(reply.results[0].times_ms) == set(served[0]["times_ms"])
            people = stub.RunFlow(pb.FlowRequest(name="people", texts=["alice visited paris"]), metadata=metadata, timeout=30)
            spans = people.results[0].answers["mood"].spans.items
            assert [s.span.type for s in spans] == ["PER"] and spans[0].answer.classification.label in {"pos", "neg"}
            flows = stub.Flows(pb.FlowsRequest(), metadata=metadata).flows
            assert [f.name for f in flows] == ["triage", "sport_names", "people"]
            assert [(s.name, s.after, list(s.when.labels), s.otherwise) for s in flows[0].stages][1:3] == [
                ("mood", "topic", ["sport"], False),
                ("general", "topic", [], True),
            ]
            assert flows[0].stages[3].chain == "../other" and flows[0].stages[3].when.score_below == pytest.approx(0.999)
            with pytest.raises(grpc.RpcError) as error:
                stub.RunFlow(pb.FlowRequest(name="nope", texts=["x"]), metadata=metadata, timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND and "unknown flow 'nope'" in (error.value.details() or "")
            with pytest.raises(grpc.RpcError) as error:
                stub.RunFlow(pb.FlowRequest(name="triage"), metadata=metadata, timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        missing = httpx.post(f"{server.url}/v1/flows/nope", json={"texts": ["x"]}, headers=AUTH, timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_flow"
        empty = httpx.post(f"{server.url}/v1/flows/triage", json={"texts": []}, headers=AUTH, timeout=10)
        assert empty.status_code == 422
        metrics = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=10).text
        counted = float(re.search(r"^finechain_texts_total (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
        assert counted >= len(texts)  # the flow's texts went through the service (and its batcher)
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]


ALLOWED = {
    "name": "allowed",
    "stages": [
        {"task": "topic"},
        {"task": "mood", "after": "topic", "allow": {"sport": ["pos"]}},
        {"name": "names", "task": "ner", "after": "topic", "allow": {"sport": ["PER"], "money": []}},
    ],
}
ALLOW_TEXTS = ["match awful alice visited paris", "bank bob dreadful rome", "phone alice met london", "goal dreadful bob oslo", "team good"]


def check_allowed(results: list, plain: list[dict]) -> None:
    """Each answer of the 'allowed' flow is the unrestricted one where its topic allows anything, else chosen among
    what it allows; and the restriction changed something."""
    changed = 0
    for result, alone in zip(results, plain, strict=True):
        topic = result.answers["topic"].label
        mood, names = result.answers["mood"], result.answers["names"]
        if topic == "sport":
            assert mood.label == "pos" and mood.scores["neg"] == 0.0 and mood.score == 1.0
            assert {e.type for e in names.entities} <= {"PER"} and not {t[2:] for t in names.tags} - {"", "PER"}
            changed += alone["mood"].label == "neg"
            changed += any(e.type == "LOC" for e in alone["ner"].entities)
        else:
            assert close(mood.to_dict(), alone["mood"].to_dict())
        if topic == "money":
            assert names.entities == [] and set(names.tags) == {"O"}
            changed += bool(alone["ner"].entities)
        if topic == "tech":
            assert close(names.to_dict(), alone["ner"].to_dict())
    assert changed >= 3


def test_allow_restricts_each_answer_to_what_its_upstream_label_allows(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage with ``allow`` chooses among the labels (a tagger: span types) listed for its upstream answer's label,
    on the kept trunk states (its branch only); an unlisted label restricts nothing. Without kept states it answers
    the same."""
    chain = Chain.from_pretrained(trained / "c")
    flow = chain.add_flow(ALLOWED)
    tails: list[dict] = []
    run_kept = chain.engine.runner.run_kept
    chain.engine.runner.run_kept = lambda h, wanted, *a, **k: tails.append(dict(wanted)) or run_kept(h, wanted, *a, **k)  # type: ignore[method-assign]
    results = flow.run(ALLOW_TEXTS)
    assert [sorted(t) for t in tails] == [["mood"], ["ner"]]  # each on the states the topic stage's pass kept
    plain = chain.predict(ALLOW_TEXTS)
    assert [r.answers["topic"].label for r in results] == ["sport", "money", "tech", "sport", "sport"]
    check_allowed(results, plain)
    monkeypatch.setattr(type(chain.engine), "keeps_states", property(lambda self: False))
    again = chain.flow("allowed").run(ALLOW_TEXTS)
    for first, second in zip(results, again, strict=True):
        assert all(close(answer.to_dict(), second.answers[key].to_dict()) for key, answer in first.answers.items())


def test_allow_seen_is_filled_in_from_the_training_file(tiny_backbone: Path, trained: Path) -> None:
    """``allow: seen`` becomes, at training, each topic's moods in the training rows (tech rows are all positive
    here), kept in the manifest; in Python, ``add_flow`` fills it in from the files the tasks were trained from, and
    is a one-line error where a task has none."""
    from finechain.jobs.training import train_chain

    rows = [r for r in combo_rows(240, 1) if not (r["topic"] == "tech" and r["mood"] == "neg")]
    write_jsonl(trained / "seen.jsonl", rows)
    head = f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n{TRAINING}\n{JOINT}"
    flows = "flows:\n  - name: f\n    stages:\n      - task: topic\n      - {task: mood, after: topic, allow: seen}\n"
    tasks = "tasks:\n  - {name: topic, train: seen.jsonl, label_column: topic}\n  - {name: mood, train: seen.jsonl, label_column: mood}\n"
    (trained / "seen.yaml").write_text(head + tasks + flows)
    train_chain(trained / "seen.yaml", trained / "seen", progress=False)
    chain = Chain.from_pretrained(trained / "seen")
    assert chain.flows["f"].stages[1].allow == {"money": ["neg", "pos"], "sport": ["neg", "pos"], "tech": ["pos"]}
    manifest = json.loads((trained / "seen" / "finechain.json").read_text())
    assert manifest["flows"][0]["stages"][1]["allow"]["tech"] == ["pos"]
    results = chain.flow("f").run(["chip awful", "bank dreadful the"])
    assert [r.answers["topic"].label for r in results] == ["tech", "money"]
    assert results[0].answers["mood"].scores["neg"] == 0.0 < results[1].answers["mood"].scores["neg"]
    seen = {"name": "g", "stages": [{"task": "topic"}, {"task": "mood", "after": "topic", "allow": "seen"}]}
    assert chain.add_flow(seen).spec.stages[1].allow == chain.flows["f"].stages[1].allow  # from the files the tasks record
    chain.records["mood"].spec = None  # a task trained from lists in Python: no file to read the pairs from
    with pytest.raises(FinechainError, match="has 'allow: seen', which is filled in from the training files"):
        chain.add_flow(seen)


def topic_ner_rows(n: int, seed: int) -> list[dict]:
    """Rows with a topic and tagged words; a city sometimes carries a comma (so the text splits into more words)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        city = rng.choice(CITIES) + ("," if i % 4 == 0 else "")
        words = [rng.choice(TOPICS[topic]), rng.choice(NAMES), "visited", city, rng.choice(FILLER)]
        rows.append({"text": " ".join(words), "words": words, "tags": ["O", "B-PER", "O", "B-LOC", "O"], "topic": topic})
    return rows


@pytest.fixture(scope="module")
def topic_ner(tiny_backbone: Path, trained: Path) -> Path:
    """A chain of a topic task and a tagger reading word lists, with a flow whose tagger stage allows only PER after
    sport."""
    from finechain.jobs.training import train_chain

    write_jsonl(trained / "tn.jsonl", topic_ner_rows(240, 1))
    write_jsonl(trained / "tn_test.jsonl", topic_ner_rows(30, 2))
    flows = "flows:\n  - name: f\n    stages:\n      - task: topic\n      - {task: ner, after: topic, allow: {sport: [PER]}}\n"
    tasks = "tasks:\n  - {name: topic, train: tn.jsonl, label_column: topic}\n"
    tasks += "  - {name: ner, type: tagging, train: tn.jsonl, text_column: words, label_column: tags}\n"
    (trained / "tn.yaml").write_text(f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n{TRAINING}\n{JOINT}" + tasks + flows)
    train_chain(trained / "tn.yaml", trained / "tn", progress=False)
    return trained / "tn"


def test_eval_of_a_flow_scores_each_stage_as_the_flow_answered(
    topic_ner: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tagger that reads word lists is scored on them (a text whose words carry punctuation splits otherwise), and a
    stage with ``allow`` on its restricted answers: here sport texts lose their cities, so the stage scores below the
    task alone, exactly as its answers do."""
    from seqeval.metrics import f1_score

    from finechain.jobs.evaluation import evaluate_flow

    test_rows = [json.loads(line) for line in (trained / "tn_test.jsonl").read_text().splitlines()]
    scores = evaluate_flow(topic_ner, "f", trained / "tn_test.jsonl")
    chain = Chain.from_pretrained(topic_ner)
    results = chain.flow("f").run([r["words"] for r in test_rows])
    answered = f1_score([r["tags"] for r in test_rows], [r.answers["ner"].tags for r in results])
    alone = chain.score("ner", [r["words"] for r in test_rows], [r["tags"] for r in test_rows])["entity_f1"]
    assert scores["stages"]["ner"]["entity_f1"] == pytest.approx(answered) and answered < alone
    assert scores["stages"]["ner"]["n"] == 30 and scores["stages"]["topic"]["accuracy"] >= 0.9
    code, out, err = cli(["check", str(trained / "tn.yaml")], monkeypatch, capsys)
    assert code == 0 and "flow f: topic; ner after topic, restricted by its label (1 listed)" in out, err


def test_an_update_that_brings_labels_no_allow_lists_warns(
    topic_ner: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    rows = topic_ner_rows(40, 3)
    for row in rows[::2]:
        row["words"][4], row["tags"][4] = "acme", "B-ORG"
    write_jsonl(trained / "tn_new.jsonl", rows)
    shutil.copytree(topic_ner, trained / "tn-updated")
    code, out, err = cli(["update", str(trained / "tn-updated"), "-t", "ner", "-d", str(trained / "tn_new.jsonl")], monkeypatch, capsys)
    assert code == 0 and "new labels: B-ORG" in out, err
    assert "flow 'f': stage 'ner' answers only what its 'allow' lists for each upstream label, and no list holds ORG" in err, err
    assert "finechain add-flow CHAIN FLOW_FILE --replace" in err


def test_add_flow_and_remove_flow_on_a_trained_chain(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``add-flow`` adds a flow file's flows to a trained chain (checked against its tasks first, ``allow: seen`` filled
    in from the files its tasks were trained from), refuses one it has unless ``--replace``; ``remove-flow`` takes
    one out; the tasks are untouched; each mistake is a one-line error at its line."""
    import shutil

    shutil.copytree(trained / "c", trained / "c-flows")
    weights = sorted((p.name, p.stat().st_mtime_ns) for p in (trained / "c-flows").rglob("*.safetensors"))
    one = "name: moods\nstages:\n  - task: topic\n  - {task: mood, after: topic, allow: seen}\n"
    (trained / "one.yaml").write_text(one)
    code, out, err = cli(["add-flow", str(trained / "c-flows"), str(trained / "one.yaml")], monkeypatch, capsys)
    assert code == 0 and "added to" in out and "flow moods: topic; mood after topic, restricted by its label (3 listed)" in out, err
    chain = Chain.from_pretrained(trained / "c-flows")
    assert chain.flows["moods"].stages[1].allow == {"money": ["neg", "pos"], "sport": ["neg", "pos"], "tech": ["neg", "pos"]}
    assert sorted(chain.flows) == ["moods", "people", "sport_names", "triage"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (trained / "c-flows").rglob("*.safetensors")) == weights
    code, _, err = cli(["add-flow", str(trained / "c-flows"), str(trained / "one.yaml")], monkeypatch, capsys)
    assert code == 2 and "one.yaml:1: flow 'moods' already exists in this chain (fix: rename it, or pass --replace)" in err, err
    (trained / "one.yaml").write_text(one.replace("allow: seen", "allow: {sport: [pos]}"))
    code, _, err = cli(["add-flow", str(trained / "c-flows"), str(trained / "one.yaml"), "--replace"], monkeypatch, capsys)
    assert code == 0 and Chain.from_pretrained(trained / "c-flows").flows["moods"].stages[1].allow == {"sport": ["pos"]}, err
    for body, message, line in [
        (
            "flows:\n  - name: b\n    stages:\n      - task: topic\n      - {task: mood, after: topic, allow: {sprot: [pos]}}\n",
            "'sprot', which 'topic' does not have",
            5,
        ),
        (
            "flows:\n  - name: b\n    stages:\n      - task: topic\n      - {task: nope, after: topic}\n",
            "unknown task 'nope' in flow 'b'",
            5,
        ),
        (
            "flows:\n  - name: b\n    stages:\n      - task: topic\n"
            "      - {task: mood, after: topic, when: {labels: [sport]}, train_on: gold}\n",
            "which applies when a chain is trained",
            5,
        ),
        ("flows:\n  - name: b\n    stages: []\n", "flows.0.stages", 3),
        (  # a problem the chain's labels show: at the line of the field, not only of its stage
            "name: b\nstages:\n  - task: topic\n  - task: mood\n    after: topic\n    allow: {sprot: [pos]}\n",
            "'sprot', which 'topic' does not have",
            6,
        ),
    ]:
        (trained / "bad_flow.yaml").write_text(body)
        code, _, err = cli(["add-flow", str(trained / "c-flows"), str(trained / "bad_flow.yaml")], monkeypatch, capsys)
        assert code == 2 and message in err and f"bad_flow.yaml:{line}:" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli(["remove-flow", str(trained / "c-flows"), "moods"], monkeypatch, capsys)
    assert code == 0 and "flow moods: removed" in out and "moods" not in Chain.from_pretrained(trained / "c-flows").flows, err
    code, _, err = cli(["remove-flow", str(trained / "c-flows"), "moods"], monkeypatch, capsys)
    assert code == 2 and "unknown flow 'moods'" in err, err


def test_allow_seen_needs_the_upstream_label_on_every_row(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = (trained / "chain.yaml").read_text().split("flows:")[0]
    spec += "flows:\n  - name: f\n    stages:\n      - task: topic\n      - {task: ner, after: topic, allow: seen}\n"
    (trained / "seen_bad.yaml").write_text(spec)
    code, _, err = cli(["check", str(trained / "seen_bad.yaml")], monkeypatch, capsys)
    assert code == 2 and "n.conll:" in err and "or list the labels under 'allow'" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_server_runs_a_flow_with_allow(trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Served, a stage with ``allow`` takes its own pass through the batcher and answers as the chain does; both
    listings show what it allows."""
    import grpc
    import httpx

    from finechain.serve.proto import finechain_pb2 as pb
    from finechain.serve.proto import finechain_pb2_grpc as pb_grpc
    from tests.test_serve import AUTH, Server

    chain = Chain.from_pretrained(trained / "c")
    local = [r.to_dict() for r in chain.add_flow(ALLOWED).run(ALLOW_TEXTS)]
    chain.save_pretrained(trained / "c-allowed")
    code, out, err = cli(["info", str(trained / "c-allowed")], monkeypatch, capsys)
    assert "flow allowed: topic; mood after topic, restricted by its label (1 listed); names (ner) after topic, restricted" in out, out
    server = Server(trained / "c-allowed", grpc=True)
    try:
        response = httpx.post(f"{server.url}/v1/flows/allowed", json={"texts": ALLOW_TEXTS}, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        assert close(response.json()["results"], [{**r, "times_ms": ANY} for r in local])
        listed = httpx.get(f"{server.url}/v1/flows", headers=AUTH, timeout=10).json()["flows"]
        assert [f["stages"][2]["allow"] for f in listed if f["name"] == "allowed"] == [{"sport": ["PER"], "money": []}]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub, metadata = pb_grpc.ChainStub(channel), tuple((k.lower(), v) for k, v in AUTH.items())
            flows = {f.name: f for f in stub.Flows(pb.FlowsRequest(), metadata=metadata).flows}
            allow = flows["allowed"].stages[2].allow
            assert {label: list(names.names) for label, names in allow.items()} == {"sport": ["PER"], "money": []}
            assert not flows["triage"].stages[1].allow
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]


def test_a_graph_per_task_export_keeps_trunk_states_for_flows(trained: Path) -> None:
    """Exported with a graph per task, a flow runs the trunk graph once per text and each routed stage's graph only on
    the texts routed to it (as a PyTorch chain does), answering as the chain does; one graph per chain cannot keep
    states and answers the same."""
    from finechain.chain import open_engine
    from finechain.export.onnx import export_onnx
    from finechain.flows.flow import Flow, saved_flow
    from finechain.spec.flows import FlowSpec

    chain = Chain.from_pretrained(trained / "c")
    chain.precision = "fp32"
    export_onnx(chain, trained / "per-task", per_task=True)
    export_onnx(chain, trained / "one-graph")
    texts = ["match good the", "bank awful film", "alice match superb", " ".join(["match alice good the"] * 20), "goal bob dreadful"]
    expected = chain.flow("sport_names").run(texts) + chain.flow("triage").run(texts)
    allowed = chain.add_flow(ALLOWED).run(ALLOW_TEXTS)
    for folder, keeps in (("per-task", True), ("one-graph", False)):
        engine = open_engine(trained / folder)
        assert engine.keeps_states is keeps
        trunk: list[list[str]] = []
        run = engine.runner.run
        engine.runner.run = lambda *a, trunk=trunk, run=run, **k: trunk.append(sorted(a[2])) or run(*a, **k)  # type: ignore[method-assign]
        got = [
            r
            for name in ("sport_names", "triage")
            for r in saved_flow(name, engine.model.flows, engine, trained / folder, open_engine).run(texts)
        ]
        assert [r.path for r in got] == [r.path for r in expected]
        for first, second in zip(got, expected, strict=True):
            for key, answer in first.answers.items():
                assert close(answer.to_dict(), second.answers[key].to_dict()), (folder, key)
        if keeps:  # triage: one trunk call for its first stage; the routes' graphs ran on the kept trunk outputs
            assert ["topic"] in trunk and ["mood", "topic"] not in trunk
        trunk.clear()
        restricted = Flow(FlowSpec.model_validate(ALLOWED), {None: engine}).run(ALLOW_TEXTS)
        for first, second in zip(restricted, allowed, strict=True):
            assert all(close(answer.to_dict(), second.answers[key].to_dict()) for key, answer in first.answers.items()), folder
        # kept states: one pass for the topic stage; one graph: one for topic, then one per stage with `allow`
        assert trunk == ([["topic"]] if keeps else [["topic"], ["mood"], ["ner"]]), (folder, trunk)


def test_flows_travel_with_copies_exports_and_int8_compressions(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved copy, an export and an int8 compression, each written elsewhere, keep the chain's flows, and the flows'
    other chain ('other', named relative to 'c') is still found from where each copy lives."""
    import httpx

    from finechain.export.onnx import export_onnx
    from finechain.export.quantize import quantize_int8
    from finechain.inference.exported import ExportedChain
    from tests.test_serve import AUTH, Server

    texts = ["match good the", "bank awful film", "alice visited paris"]
    local = [r.to_dict() for r in Chain.from_pretrained(trained / "c").flow("triage").run(texts)]
    Chain.from_pretrained(trained / "c").save_pretrained(trained / "copies" / "c")
    copied = Chain.from_pretrained(trained / "copies" / "c")
    assert copied.flows["triage"].stages[-1].chain == "../../other"
    assert [r.to_dict()["path"] for r in copied.flow("triage").run(texts)] == [r["path"] for r in local]
    export_onnx(trained / "c", trained / "exports" / "c-onnx", tasks=["topic", "mood"])  # ner not exported: its flows left out
    exported = ExportedChain(trained / "exports" / "c-onnx")
    assert list(exported.flows) == ["triage"] and exported.flows["triage"].stages[-1].chain == "../../other"
    quantize_int8(trained / "exports" / "c-onnx", trained / "deep" / "er" / "c-int8")
    assert ExportedChain(trained / "deep" / "er" / "c-int8").flows["triage"].stages[-1].chain == "../../../other"
    (trained / "in3.txt").write_text("\n".join(texts) + "\n")
    for folder in (trained / "exports" / "c-onnx", trained / "deep" / "er" / "c-int8"):
        code, out, err = cli(["predict", str(folder), "--flow", "triage", "--input", str(trained / "in3.txt")], monkeypatch, capsys)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["path"] for r in records] == [r["path"] for r in local]
        assert [r["answers"]["topic"]["label"] for r in records] == [r["answers"]["topic"]["label"] for r in local]
        code, out, err = cli(["predict", str(folder), "--flow", "people", "--input", str(trained / "in3.txt")], monkeypatch, capsys)
        assert code == 2 and "unknown flow 'people'" in err and "triage" in err, err
        code, out, err = cli(["info", str(folder)], monkeypatch, capsys)
        assert code == 0 and [line[:12] for line in out.splitlines() if line.startswith("flow ")] == ["flow triage:"], out
    code, out, err = cli(
        ["eval", str(trained / "exports" / "c-onnx"), "--flow", "triage", "--data", str(trained / "combo_test.jsonl")], monkeypatch, capsys
    )
    assert code == 0 and "exact_match" in out, err
    server = Server(trained / "exports" / "c-onnx")
    try:
        response = httpx.post(f"{server.url}/v1/flows/triage", json={"texts": texts}, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        assert [r["path"] for r in response.json()["results"]] == [r["path"] for r in local]
    finally:
        server.stop()


ROUTED = """
  - name: routed
    stages:
      - task: topic
      - {task: sport_mood, after: topic, when: {labels: [sport]}, train_on: predicted}
      - {task: rest_mood, after: topic, otherwise: true, train_on: gold}
"""


def test_routed_stages_train_on_the_rows_their_route_sends_them(tiny_backbone: Path, trained: Path) -> None:
    """train_on: predicted keeps the training rows the trained topic stage sends the stage; gold those whose topic
    label does (the default route: every topic but sport); the test file is chosen the same way."""
    from finechain.jobs.training import train_chain

    head = f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n{TRAINING}\n"
    (trained / "routed.yaml").write_text(
        head + "tasks:\n  - {name: topic, train: combo.jsonl, label_column: topic}\n"
        "  - {name: sport_mood, train: combo.jsonl, test: combo_test.jsonl, label_column: mood}\n"
        "  - {name: rest_mood, train: combo.jsonl, label_column: mood}\nflows:" + ROUTED
    )
    import io

    from rich.console import Console

    said = io.StringIO()
    train_chain(trained / "routed.yaml", trained / "routed", progress=False, console=Console(file=said, width=200))
    assert "already trained" not in said.getvalue()  # a fresh run: the routed tasks are trained later, not kept
    assert "rows reach stage 'sport_mood' of flow 'routed' (predicted routes)" in said.getvalue()
    chain = Chain.from_pretrained(trained / "routed")
    rows = [json.loads(line) for line in (trained / "combo.jsonl").read_text().splitlines()]
    predicted = [p["topic"].label for p in chain.predict([r["text"] for r in rows], ["topic"])]
    sport = chain.records["sport_mood"].data["route"]
    assert sport["train_on"] == "predicted" and sport["rows"]["train"] == [predicted.count("sport"), 240]
    test_rows = [json.loads(line) for line in (trained / "combo_test.jsonl").read_text().splitlines()]
    test_sport = [p["topic"].label for p in chain.predict([r["text"] for r in test_rows], ["topic"])].count("sport")
    assert sport["rows"]["test"] == [test_sport, 30] and chain.records["sport_mood"].metrics["test"]["n"] == test_sport
    rest = chain.records["rest_mood"].data["route"]
    assert rest["train_on"] == "gold" and rest["rows"]["train"] == [sum(r["topic"] != "sport" for r in rows), 240]
    assert [r.path for r in chain.flow("routed").run(["match good the"])] in ([["topic", "sport_mood"]], [["topic", "rest_mood"]])


BAD_ROUTED = [
    ("{task: sport_mood, after: topic, train_on: predicted}", "has 'train_on: predicted' but no route to choose its rows"),
    ("{task: sport_mood, after: topic, when: {score_below: 0.6}, train_on: gold}", "routes on a score: gold data has labels"),
    (
        "{task: sport_mood, after: topic, otherwise: true, train_on: predicted}\n      - {name: again, task: sport_mood, after: topic, "
        "when: {labels: [money]}, train_on: gold}",
        "is trained on a route's rows by two stages",
    ),
]


@pytest.mark.parametrize(("stage", "message"), BAD_ROUTED)
def test_bad_train_on_is_a_one_line_error_at_its_line(
    tiny_backbone: Path, trained: Path, stage: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\ntasks:\n  - {{name: topic, train: combo.jsonl, label_column: topic}}\n"
    body += "  - {name: sport_mood, train: combo.jsonl, label_column: mood}\n"
    body += f"flows:\n  - name: f\n    stages:\n      - task: topic\n      - {stage}\n"
    (trained / "bad_routed.yaml").write_text(body)
    code, _, err = cli(["check", str(trained / "bad_routed.yaml")], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(r"bad_routed\.yaml:(11|12):", err), err


def test_gold_routes_need_the_upstream_label_on_every_row(tiny_backbone: Path, trained: Path) -> None:
    from finechain.errors import DataError
    from finechain.flows.routing import routed_task_data
    from finechain.spec import TaskSpec
    from finechain.spec.flows import FlowSpec

    rows = combo_rows(20, 3)
    del rows[4]["topic"]
    write_jsonl(trained / "holes.jsonl", rows)
    flow = FlowSpec.model_validate(
        {"name": "f", "stages": [{"task": "topic"}, {"task": "m", "after": "topic", "when": {"labels": ["sport"]}, "train_on": "gold"}]}
    )
    task = TaskSpec(name="m", train=trained / "holes.jsonl", label_column="mood")
    with pytest.raises(DataError, match="label field 'topic' missing") as error:
        routed_task_data(task, flow, flow.stages[1], {}, upstream=TaskSpec(name="topic", label_column="topic"))
    assert error.value.line == 5
