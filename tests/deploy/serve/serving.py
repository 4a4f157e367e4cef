"""What the serve tests share: prompts, adapters with random weights, the reference outputs of `llmcycle generate`."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import run_cli

PROMPTS = [
    "Summarize: Amy and Ben. #Person1#: can we book a table today? Summary:",
    "hello there",
    "Summarize: Dev and Elena. #Person1#: can we fix the printer today? #Person2#: can we fix the printer today? Summary:",
]

NAMES = ["lora1", "lora2", "soft"]
MAX_TOKENS = 10


def make_adapters(base: Path, out: Path, seq2seq: bool) -> dict[str, Path]:
    """Two LoRA adapters and a prompt-tuning adapter with random (non-zero) weights, so each changes the outputs."""
    import peft
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    task = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    configs = {
        "lora1": peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=task),
        "lora2": peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type=task),
        "soft": peft.PromptTuningConfig(num_virtual_tokens=4, task_type=task),
    }
    paths = {}
    for seed, (name, config) in enumerate(configs.items()):
        model = peft.get_peft_model(auto.from_pretrained(base), config)
        generator = torch.Generator().manual_seed(10 + seed)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name or "prompt_encoder" in parameter_name:
                    scale = 1.0 if "prompt_encoder" in parameter_name else 0.3
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        model.save_pretrained(out / name)
        paths[name] = out / name
    return paths


@pytest.fixture(scope="module")
def setups(llama_dir, t5_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-adapters")
    return {
        "llama": (llama_dir, make_adapters(llama_dir, root / "llama", False)),
        "t5": (t5_dir, make_adapters(t5_dir, root / "t5", True)),
    }


def cli_generate(capsys, base: Path, prompts_file: Path, adapter: tuple[str, Path] | None) -> list[str]:
    """What `llmcycle generate` writes for each prompt, greedy."""
    args = ["generate", "--model", base, "--data", prompts_file, "--max-new-tokens", MAX_TOKENS, "--batch-size", 1]
    if adapter:
        args += ["--adapter", f"{adapter[0]}={adapter[1]}", "--use", adapter[0]]
    capsys.readouterr()
    assert run_cli(*args) == 0
    return [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, header = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, header = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), header
    except ValueError:
        return status, {"text": raw.decode()}, header


def _health(port: int) -> int | None:
    try:
        return http(f"http://127.0.0.1:{port}/health")[0]
    except OSError:
        return None


def start(config):
    """A server for `config` on a free loopback port, ready to answer; stopped again if it fails to get ready."""
    from llmcycle.deploy.serve.listening import bind
    from llmcycle.deploy.serve.server import RunningServer

    server = RunningServer(config, bind("127.0.0.1", 0)).start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
