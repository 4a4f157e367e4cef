"""`llmcycle serve --engine vllm`: the same base and LoRA adapters on vLLM's own OpenAI server, for users with GPUs.

vLLM serves decoder-only models with LoRA adapters; it dropped encoder-decoder models and prompt adapters, and
does not serve DoRA, so those are refused in one line naming the reason. The server is started as
`python -m vllm.entrypoints.openai.api_server` (the `vllm` script looks up a package named `vllm`, which vLLM's
CPU build is not), with the interpreter in LLMCYCLE_VLLM_PYTHON when set (a side environment), else this one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ...console import note
from ...errors import UserError
from ...models import DECODER_ONLY, locate
from .config import ServerConfig
from .models import adapter_config, adapter_folder, base_kind

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts


def _adapter_rank(name: str, path: str) -> int:
    """The LoRA rank of an adapter, refusing what vLLM cannot serve."""
    config, _ = adapter_config(name, path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise UserError(f"--engine vllm: adapter {name} is {peft_type.lower().replace('_', ' ')}, which vLLM does not "
                        "serve (it serves LoRA only); drop --engine vllm to serve it with llmcycle")
    if config.get("use_dora"):
        raise UserError(f"--engine vllm: adapter {name} uses DoRA, which vLLM does not serve; drop --engine vllm")
    ranks = [int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def vllm_command(config: ServerConfig, python: str) -> list[str]:
    """vLLM's command line for a ServerConfig, after checking vLLM can serve it."""
    source = locate(config.model)
    if source.adapters:
        raise UserError(f"--engine vllm: {config.model} is an adapter run folder; give its base with --model and the "
                        "adapter with --adapter NAME=DIR")
    if base_kind(source.base, config.trust_remote_code) != DECODER_ONLY:
        raise UserError("--engine vllm: vLLM does not serve encoder-decoder models (T5, BART); drop --engine vllm")
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", source.base, "--served-model-name", config.base_name,
               "--host", config.host, "--port", str(config.port), "--max-num-seqs", str(config.max_num_seqs)]
    if config.adapters:
        rank = max(_adapter_rank(n, p) for n, p in config.adapters)
        allowed = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        if allowed is None:
            raise UserError(f"--engine vllm: LoRA rank {rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
        command += ["--enable-lora", "--max-lora-rank", str(allowed), "--max-loras", str(len(config.adapters)),
                    "--lora-modules", *(f"{n}={adapter_folder(p)}" for n, p in config.adapters)]
    if config.dtype != "auto":
        command += ["--dtype", config.dtype]
    if config.max_model_len:
        command += ["--max-model-len", str(config.max_model_len)]
    if config.api_key:
        command += ["--api-key", config.api_key]
    if config.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def vllm_python() -> str:
    side = os.environ.get("LLMCYCLE_VLLM_PYTHON")
    if side:
        if not Path(side).is_file():
            raise UserError(f"LLMCYCLE_VLLM_PYTHON={side} does not exist")
        return side
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--engine vllm: vLLM is not installed here; `pip install vllm` (GPU), or point "
                        "LLMCYCLE_VLLM_PYTHON at the python of an environment that has it")
    return sys.executable


def run_vllm(config: ServerConfig) -> None:
    """Replace this process with vLLM's server, so Ctrl-C and SIGTERM reach it directly."""
    python = vllm_python()
    command = vllm_command(config, python)
    note("handing over to vLLM: " + " ".join(command))
    os.execv(python, command)
