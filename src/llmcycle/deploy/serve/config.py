"""What `llmcycle serve` is started with: one dataclass whose fields are the verb's flags (cli/serve.py makes them).

Each default is written here once; the engine takes its limits from this config. Light on purpose (no torch, no
FastAPI): the CLI reads it to list the flags for `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config import above, at_least
from ...train.settings import Dtype

EngineName = Literal["llmcycle", "vllm"]  # which server answers: ours, or vLLM's own (deploy/serve/vllm.py)


def served_name(model: str, served_model_name: str | None = None) -> str:
    """The base model's name in the API: `served_model_name` when given, else the model's folder name."""
    return served_model_name or Path(model.rstrip("/")).name or model


@dataclass
class ServerConfig:
    """What `llmcycle serve` was started with."""

    model: str
    """Base model: folder, llmcycle run folder or hub id."""
    adapters: list[tuple[str, str]] = field(default_factory=list)
    """Serve a peft adapter under NAME (repeatable)."""
    served_model_name: str | None = None
    """Name of the base model in the API (default: its folder name)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' on /v1 routes."""
    dtype: Dtype = "auto"
    """Weights dtype; auto is float32 on CPU, bfloat16 on a GPU."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run."""
    max_num_seqs: int = at_least(64, 1)
    """Sequences decoded together."""
    max_queued_requests: int = at_least(1024, 0)
    """Waiting requests before 429."""
    request_timeout: float | None = above(None, 0)
    """Seconds a request may take."""
    max_model_len: int | None = at_least(None, 1)
    """Context window (default: the model's)."""
    max_request_bytes: int = at_least(1 << 20, 1)
    """Largest request body (413 above)."""
    allow_adapter_loading: bool = False
    """Enable /v1/load_lora_adapter and /v1/unload_lora_adapter."""
    engine: EngineName = "llmcycle"
    """vllm: start vLLM's own OpenAI server with the same base and LoRA adapters."""

    @property
    def base_name(self) -> str:
        """The base model's name in the API."""
        return served_name(self.model, self.served_model_name)
