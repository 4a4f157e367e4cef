"""lm-evaluation-harness as a client: its `local-completions` model, pointed at `llmcycle serve`, scores a
multiple-choice task through echo + logprobs + token-id prompts and picks what `llmcycle eval --suite` picks."""

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
        "tokenized_requests": True, "num_concurrent": 2, "max_retries": 1}
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
