"""The `feedback` stage: rounds of ranking (a simulated labeler here), reward model and PPO, each round a variant."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import build, run_cli, write_jsonl

from llmcycle.train.finetune import FinetuneConfig, finetune

WORDS = ["red", "big", "cold", "far", "new", "old", "hot", "wet"]


def yes_no_rows(count: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"Question {i}: is it {WORDS[i % len(WORDS)]}?", "completion": "yes" if i % 2 else "no"}
            for i in range(offset, offset + count)]


@pytest.fixture(scope="module")
def yes_no_policy(tmp_path_factory) -> Path:
    """A tiny GPT-2 fine-tuned to answer each question "yes" or "no" about equally often (every question is in its
    data with both answers), so its samples differ and a rule that prefers "yes" has somewhere to take it."""
    root = tmp_path_factory.mktemp("feedback")
    base = build("gpt2", root / "base", dropout=0.0)
    rows = yes_no_rows(16)
    data = write_jsonl(root / "sft.jsonl", rows + [{**row, "completion": "no" if row["completion"] == "yes" else "yes"} for row in rows])
    finetune(FinetuneConfig(model=str(base), data=str(data), out=str(root / "sft"), method="full", lr=3e-3, max_steps=30, batch_size=8))
    return root / "sft" / "model"


def recipe(tmp_path: Path, model, feedback: dict, stages_after=()) -> Path:
    text = yaml.safe_dump({
        "name": "feedback", "model": str(model),
        "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", yes_no_rows(32))),
                 "test": str(write_jsonl(tmp_path / "test.jsonl", yes_no_rows(48, offset=100)))},
        "generation": {"max_new_tokens": 4, "batch_size": 16, "do_sample": True, "seed": 1}, "metrics": ["rouge"],
        "stages": [{"feedback": feedback}, *stages_after],
    })
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


SIMULATED = {
    "rounds": 2, "labeler": "simulated", "rule": ["word=yes"], "k": 2, "prompts_per_round": 16,
    "reward": {"max_steps": 16, "batch_size": 8, "lr": 5.0e-5, "max_length": 32},
    "ppo": {"max_steps": 8, "batch_size": 16, "mini_batch_size": 8, "lr": 3.0e-3, "kl_coef": 0.05, "max_new_tokens": 4},
}


@pytest.mark.slow
def test_two_simulated_rounds_raise_the_policys_reward(yes_no_policy, tmp_path, capsys):
    path = recipe(tmp_path, yes_no_policy, SIMULATED, [{"report": {}}])
    assert run_cli("run", path, "--out", tmp_path / "run") == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    first, second = metrics["feedback-round-1"], metrics["feedback-round-2"]
    start = first["reward_start"]["mean"]
    assert start < first["reward"]["mean"] < second["reward"]["mean"], (start, first["reward"], second["reward"])
    assert second["reward_gain"]["outcome"] == "better"
    for entry in (first, second):
        assert set(entry) >= {"reward", "toxicity", "rougeL", "reward_model_accuracy", "kl_to_start", "reward_start", "cost"}
        assert entry["reward_model_accuracy"]["n"] > 0 and entry["kl_to_start"]["n"] == 48
    assert (first["cost"]["round"], second["cost"]["round"]) == (1, 2) and first["cost"]["labeler"] == "simulated"
    stage = tmp_path / "run/stages/01-feedback"
    for number in (1, 2):
        rows = [json.loads(line) for line in (stage / f"round-{number}/rankings.jsonl").read_text().splitlines()]
        assert 0 < len(rows) <= 16  # prompts whose samples never differed are skipped
        assert all(row["labeler"] == "simulated" and len(set(row["responses"])) == 2 for row in rows)
        assert all(row["ranking"] == [1 + (row["responses"][0].count("yes") < row["responses"][1].count("yes")),
                                      1 + (row["responses"][1].count("yes") < row["responses"][0].count("yes"))] for row in rows
                   if all(len(r.split()) == 1 for r in row["responses"]))  # one-word answers: "yes" ranks first
        assert (stage / f"round-{number}/round.json").is_file()
    report = (tmp_path / "run/report.html").read_text()
    assert "Human feedback, round by round" in report and "feedback-round-2" in report
    assert "Rounds of feedback raise the policy's reward" in report


@pytest.mark.parametrize("feedback, message", [
    ({"rounds": 0}, "(feedback): rounds must be at least 1"),
    ({"k": 12}, "(feedback): k must be at most 9"),
    ({"rule": ["kindness"]}, "(feedback): rule 'kindness' is not one of toxicity, length, word=WORD"),
    ({"labeler": "missing-{round}.jsonl", "rounds": 2}, "missing-1.jsonl does not exist"),
    ({"ppo": {"reward": ["toxicity"]}}, "(feedback): ppo.reward is set by the stage"),
    ({"reward": {"learning_rate": 1}}, "(feedback): reward: unknown field 'learning_rate'"),
    ({"from": "nowhere"}, "'from: nowhere' names no earlier variant"),
    ({"labeler": "human", "host": "0.0.0.0"}, "host 0.0.0.0 is not a loopback address"),
    ({"colour": "red"}, "(feedback): unknown field 'colour'"),
])
def test_bad_feedback_options_are_one_line_errors(tmp_path, capsys, feedback, message):
    assert run_cli("run", recipe(tmp_path, "some-model", feedback), "--dry-run") == 2
    error = capsys.readouterr().err.strip()
    assert message in " ".join(error.split()) and len(error.splitlines()) == 1


def test_a_rankings_file_per_round_is_accepted(tmp_path, capsys):
    for number in (1, 2):
        (tmp_path / f"ranked-{number}.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2]}) + "\n")
    assert run_cli("run", recipe(tmp_path, "some-model", {"rounds": 2, "labeler": "ranked-{round}.jsonl"}), "--dry-run") == 0
    assert "feedback" in capsys.readouterr().out


def rank_through_the_api(port: int, stop: threading.Event) -> None:
    """A labeler at the page's API: ranks every item it is given ("yes" first) until the stage stops the page."""
    url = f"http://127.0.0.1:{port}"
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/api/next", timeout=5) as response:
                item = json.loads(response.read()) if response.status == 200 else None
        except OSError:
            time.sleep(0.2)  # not up yet, or gone
            continue
        if item is None:
            time.sleep(0.2)
            continue
        ranking = [1 if "yes" in text else 2 for text in item["responses"]]
        ranking = ranking if len(set(ranking)) > 1 else list(range(1, len(ranking) + 1))
        body = json.dumps({"item": item["item"], "ranking": ranking}).encode()
        urllib.request.urlopen(urllib.request.Request(url + "/api/rank", data=body, method="POST"), timeout=5).close()


@pytest.mark.slow
def test_a_human_round_waits_for_the_page_and_a_rerun_keeps_it(yes_no_policy, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    feedback = {**SIMULATED, "rounds": 1, "labeler": "human", "port": port, "prompts_per_round": 6,
                "ppo": {**SIMULATED["ppo"], "max_steps": 2}, "reward": {**SIMULATED["reward"], "max_steps": 2}}
    stop = threading.Event()
    labeler = threading.Thread(target=rank_through_the_api, args=(port, stop), daemon=True)
    labeler.start()
    try:
        assert run_cli("run", recipe(tmp_path, yes_no_policy, feedback), "--out", tmp_path / "run") == 0
    finally:
        stop.set()
        labeler.join(timeout=10)
    rankings = tmp_path / "run/stages/01-feedback/round-1/rankings.jsonl"
    rows = [json.loads(line) for line in rankings.read_text().splitlines()]
    assert rows and all(row["labeler"] == "anonymous" for row in rows)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["feedback-round-1"]["cost"] | {"labeler": "human", "rankings": len(rows)} == metrics["feedback-round-1"]["cost"]
    (tmp_path / "run/stages/01-feedback/stage.json").unlink()  # the stage runs again: the complete round is kept
    assert run_cli("run", recipe(tmp_path, yes_no_policy, feedback), "--out", tmp_path / "run") == 0
    assert [json.loads(line) for line in rankings.read_text().splitlines()] == rows
