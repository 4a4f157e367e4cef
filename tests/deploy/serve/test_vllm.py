"""`llmcycle serve --engine vllm`: the hand-off to vLLM's own server. The refusals need no vLLM; the live test runs
vLLM's CPU build from its side environment (/work/shared/peers/venv-vllm-cpu.sh) and is skipped without it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_jsonl
from serving import MAX_TOKENS, PROMPTS, _health, cli_generate, free_port, setups  # noqa: F401  (setups: fixture)

openai = pytest.importorskip("openai")

from llmcycle.deploy.serve.config import ServerConfig  # noqa: E402

VLLM_PYTHON = Path(os.environ.get("PEERS_HOME", "/tmp/llmcycle-peers")) / "vllm-cpu" / "bin" / "python"


def test_vllm_hand_off_refuses_what_vllm_cannot_serve(setups, capsys, monkeypatch):
    monkeypatch.setenv("LLMCYCLE_VLLM_PYTHON", sys.executable)  # the checks come before vLLM is started
    t5_base, t5_adapters = setups["t5"]
    llama_base, llama_adapters = setups["llama"]
    assert run_cli("serve", "--engine", "vllm", "--model", t5_base) == 2
    assert "encoder-decoder" in capsys.readouterr().err
    assert run_cli("serve", "--engine", "vllm", "--model", llama_base, "--adapter", f"soft={llama_adapters['soft']}") == 2
    assert "prompt tuning, which vLLM does not serve" in capsys.readouterr().err


def test_vllm_command_carries_base_and_lora_adapters(setups):
    from llmcycle.deploy.serve.vllm import vllm_command

    base, adapters = setups["llama"]
    config = ServerConfig(str(base), [("a", str(adapters["lora1"])), ("b", str(adapters["lora2"]))], served_model_name="tiny",
                          port=9000, max_model_len=128)
    command = vllm_command(config, "PY")
    assert command[:3] == ["PY", "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--max-lora-rank") + 1] == "8"  # ranks 4 and 2 round up to vLLM's smallest
    start = command.index("--lora-modules") + 1
    assert command[start:start + 2] == [f"a={adapters['lora1']}", f"b={adapters['lora2']}"]
    assert command[command.index("--served-model-name") + 1] == "tiny" and "--enable-lora" in command


def without_partial_characters(text: str) -> str:
    """vLLM's detokenizer holds back the bytes of a character cut off by max_tokens; transformers' decode shows
    them as U+FFFD. The tokens are the same; the texts differ only there."""
    return text.replace("\ufffd", "").strip()


def vllm_sized_llama(tmp_path: Path) -> Path:
    """A Llama with head size 32 (vLLM-CPU has no kernel for 16) and a LoRA adapter in tmp_path/lora."""
    import peft
    from transformers import AutoModelForCausalLM

    from conftest import build

    base = build("llama", tmp_path / "llama", hidden=128, heads=4)
    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)) * 0.3)
    lora.save_pretrained(tmp_path / "lora")
    return base


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason="vLLM's CPU build is not installed (/work/shared/peers/venv-vllm-cpu.sh)")
def test_vllm_hand_off_serves_the_same_greedy_answers(tmp_path, capsys):
    """vLLM-CPU serving a Llama and a LoRA adapter, started by `llmcycle serve --engine vllm`, answers as
    `llmcycle generate` does."""
    base = vllm_sized_llama(tmp_path)
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    expected = {"tiny": cli_generate(capsys, base, prompts_file, None), "a": cli_generate(capsys, base, prompts_file, ("a", tmp_path / "lora"))}
    port = free_port()
    env = {**os.environ, "LLMCYCLE_VLLM_PYTHON": str(VLLM_PYTHON), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "llmcycle", "serve", "--engine", "vllm", "--model", str(base), "--served-model-name", "tiny",
               "--adapter", f"a={tmp_path / 'lora'}", "--port", str(port), "--max-model-len", "256", "--dtype", "float32"]
    log = open(tmp_path / "vllm.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(1200):  # vLLM takes a minute or two to start on a CPU
            if process.poll() is not None or _health(port) == 200:
                break
            time.sleep(0.25)
        assert _health(port) == 200, (tmp_path / "vllm.log").read_text()[-3000:]
        vllm = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", max_retries=0, timeout=120)
        for name in ("tiny", "a"):
            answer = vllm.completions.create(model=name, prompt=PROMPTS, max_tokens=MAX_TOKENS, temperature=0)
            served = [c.text for c in sorted(answer.choices, key=lambda c: c.index)]
            assert [without_partial_characters(t) for t in served] == [without_partial_characters(t) for t in expected[name]], name
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


BENCH_CLIENT = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
for backend, endpoint in (("vllm", "/v1/completions"), ("openai-chat", "/v1/chat/completions"),
                          ("openai-responses", "/v1/responses")):
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    main(parser.parse_args(["--backend", backend, "--endpoint", endpoint, *sys.argv[1:]]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason="vLLM's CPU build is not installed (/work/shared/peers/venv-vllm-cpu.sh)")
def test_vllms_own_benchmark_client_runs_unchanged_against_llmcycle_serve(setups, tmp_path):
    """`vllm bench serve` (its module: the side environment's `vllm` script lacks package metadata) with its
    completions, chat and Responses backends: every request succeeds, each with the output length it asked for."""
    from serving import start

    base, _ = setups["llama"]
    server = start(ServerConfig(str(base), [], served_model_name="tiny"))
    try:
        done = subprocess.run([str(VLLM_PYTHON), "-c", BENCH_CLIENT, "--base-url", server.url, "--model", "tiny",
                               "--tokenizer", str(base), "--dataset-name", "random", "--random-input-len", "16",
                               "--random-output-len", "8", "--num-prompts", "12", "--max-concurrency", "4", "--ignore-eos"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split()[-1] for line in lines if line.startswith("Successful requests:")] == ["12"] * 3, done.stdout[-3000:]
    assert [line.split()[-1] for line in lines if line.startswith("Failed requests:")] == ["0"] * 3
    assert [line.split()[-1] for line in lines if line.startswith("Total generated tokens:")] == ["96"] * 3
