"""lm-evaluation-harness as a client: its `local-completions` model, pointed at `llmcycle serve`, scores a
multiple-choice task through echo + logprobs + token-id prompts and picks what `llmcycle eval --suite` picks; its
`local-completions` and `local-chat-completions` generate a task's answers as `llmcycle generate` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, write_jsonl
from llmcycle.deploy.serve.config import ServerConfig
from llmcycle.deploy.serve.listening import bind
from llmcycle.deploy.serve.server import RunningServer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from suite_throughput import peer_python, task_config  # noqa: E402

ROWS = [
    {"question": "Amy and Ben want to book a table. Who books?", "choices": ["Amy", "Ben", "Carla", "Dev"], "answer": 0},
    {"question": "Can we fix the printer today?", "choices": ["yes", "no, not today"], "answer": 1},
    {"question": "What do they plan?", "choices": ["a trip", "a present", "a flat"], "answer": 0},
    {"question": "Who moves the meeting?", "choices": ["Elena", "Farid", "Amy"], "answer": 2},
    {"question": "Where do they meet?", "choices": ["at the cafe", "at home", "in the park", "at work"], "answer": 3},
]

CLIENT = """
import json, sys
import lm_eval
url, tokenizer, task = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
args = {"model": "served", "base_url": url, "tokenizer": tokenizer, "tokenizer_backend": "huggingface",
        "tokenized_requests": True, "num_concurrent": 2, "max_retries": 1, "batch_size": 4}  # four prompts a request
results = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=[task], log_samples=True,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
samples = sorted(results["samples"]["llmcycle_suite"], key=lambda s: s["doc_id"])
print(json.dumps([[float(r[0]) for r in s["filtered_resps"]] for s in samples]))
"""


@pytest.mark.slow
@pytest.mark.skipif(peer_python() is None, reason="lm-eval side venv absent (bash /work/shared/peers/venv-lm-eval.sh)")
def test_lm_eval_local_completions_picks_what_eval_suite_picks(llama_dir, tmp_path):
    suite = write_jsonl(tmp_path / "suite.jsonl", ROWS)
    samples = tmp_path / "samples.jsonl"
    assert run_cli("eval", "-m", llama_dir, "--suite", suite, "--samples", samples, "--bootstrap", 0) == 0
    ours = [json.loads(line) for line in samples.read_text().splitlines()]
    server = RunningServer(ServerConfig(str(llama_dir), [], served_model_name="served"), bind("127.0.0.1", 0)).start()
    try:
        server.wait_ready()
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
        done = subprocess.run([peer_python(), "-c", CLIENT, server.url + "/v1/completions", str(llama_dir),
                               json.dumps(task_config(str(suite), 0, None))], capture_output=True, text=True, env=env, timeout=600)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [o["pred"] for o in ours] == [max(range(len(p)), key=p.__getitem__) for p in theirs]
    for o, p in zip(ours, theirs):
        assert o["loglikelihoods"] == pytest.approx(p, abs=1e-4)


GENERATE = """
import json, sys
import lm_eval
url, tokenizer, task, model = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
args = {"model": "served", "base_url": url, "tokenizer": tokenizer, "tokenizer_backend": "huggingface",
        "num_concurrent": 2, "max_retries": 1}
if model == "local-completions":
    args["tokenized_requests"] = True
results = lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], log_samples=True,
                                  apply_chat_template=model == "local-chat-completions")
samples = sorted(results["samples"]["llmcycle_generate"], key=lambda s: s["doc_id"])
print(json.dumps([s["resps"][0][0] for s in samples]))
"""
UNTIL = ["ing", "e", "zz", "yy", "xx", "ww"]  # more than OpenAI's four, as tasks may have


@pytest.mark.slow
@pytest.mark.skipif(peer_python() is None, reason="lm-eval side venv absent (bash /work/shared/peers/venv-lm-eval.sh)")
def test_lm_eval_generates_through_both_routes_what_generate_gives(llama_dir, tmp_path):
    """generate_until with six stop strings, greedy: each answer equals `llmcycle generate`'s text for the same
    prompt (the chat template's prompt for local-chat-completions) cut at the first stop string."""
    from llmcycle.models import chat_renderer, load_model

    rows = [{"question": row["question"], "answer": row["choices"][row["answer"]]} for row in ROWS]
    data = write_jsonl(tmp_path / "gen.jsonl", rows)
    task = {"task": "llmcycle_generate", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": UNTIL, "max_gen_toks": 12, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}]}
    render = chat_renderer(load_model(str(llama_dir)).tokenizer)
    prompts = {"local-completions": [row["question"] for row in rows],
               "local-chat-completions": [render([{"role": "user", "content": row["question"]}], True) for row in rows]}
    server = RunningServer(ServerConfig(str(llama_dir), [], served_model_name="served"), bind("127.0.0.1", 0)).start()
    answers = {}
    try:
        server.wait_ready()
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
        for model, route in (("local-completions", "/v1/completions"), ("local-chat-completions", "/v1/chat/completions")):
            done = subprocess.run([peer_python(), "-c", GENERATE, server.url + route, str(llama_dir), json.dumps(task), model],
                                  capture_output=True, text=True, env=env, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            answers[model] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    raw = []
    for model, texts in prompts.items():
        out = tmp_path / f"{model}.jsonl"
        write_jsonl(tmp_path / f"{model}.prompts.jsonl", [{"prompt": text} for text in texts])
        assert run_cli("generate", "-m", llama_dir, "-d", tmp_path / f"{model}.prompts.jsonl", "--max-new-tokens", 12,
                       "-o", out) == 0
        raw += [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
        assert answers[model] == [cut(text, UNTIL) for text in raw[-len(texts):]], model
    assert any(cut(text, UNTIL) != text for text in raw) and any(len(text) > 2 for text in answers["local-completions"])


def cut(text: str, stops: list[str]) -> str:
    ends = [text.index(stop) for stop in stops if stop in text]
    return text[:min(ends)] if ends else text
