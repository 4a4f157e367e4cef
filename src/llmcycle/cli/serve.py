"""`llmcycle serve`: the base model and its adapters behind an OpenAI-compatible HTTP API.

vLLM's spellings are taken too (`--lora-modules NAME=DIR [NAME=DIR ...]`, `--served-model-name`, `--enable-lora`,
a positional model), so a vLLM command line mostly carries over.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..console import note, out, print_table
from ..errors import UserError
from .options import DTYPE_CHOICES, parse_adapters


def parse_lora_modules(values, extra) -> list[tuple[str, str]]:
    """vLLM's --lora-modules: NAME=DIR or a JSON object {"name", "path"}; several may follow one flag."""
    pairs = []
    for value in [*values, *extra]:
        if value.lstrip().startswith("{"):
            try:
                item = json.loads(value)
                pairs.append((str(item["name"]), str(item["path"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"--lora-modules {value!r}: write NAME=DIR or {{\"name\": ..., \"path\": ...}}") from exc
        else:
            pairs += parse_adapters([value])
    return pairs


def split_positionals(model, lora_values, extra) -> tuple[str, list[str]]:
    """The model (flag or vLLM's positional) and the NAME=DIR values that followed --lora-modules."""
    extra = list(extra)
    if model is None and extra and "=" not in extra[0] and not extra[0].startswith("{"):
        model = extra.pop(0)
    if model is None:
        raise UserError("give the model: --model DIR (a folder, run folder or hub id)")
    if extra and not lora_values:
        raise UserError(f"unexpected argument {extra[0]!r}; adapters go after --adapter or --lora-modules")
    return model, extra


def print_banner(url: str, names: list[tuple[str, str]], api_key: str | None) -> None:
    print_table(f"llmcycle serve at {url}/v1 (playground: {url}/)", ["served name", "what"], names)
    out.print("Example:", highlight=False)
    out.print(
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url=\"{url}/v1\", api_key=\"{'YOUR_KEY' if api_key else 'EMPTY'}\")\n"
        f"  client.completions.create(model=\"{names[-1][0]}\", prompt=\"Hello\", max_tokens=32)",
        highlight=False, markup=False,
    )
    out.print("Ctrl-C stops the server.", highlight=False)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("extra", nargs=-1, metavar="[MODEL]")
@click.option("--model", "-m", default=None, help="Base model: folder, llmcycle run folder or hub id.")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="Serve a peft adapter under NAME (repeatable).")
@click.option("--lora-modules", multiple=True, metavar="NAME=DIR", help="vLLM's spelling of --adapter; several may follow one flag.")
@click.option("--served-model-name", default=None, help="Name of the base model in the API (default: its folder name).")
@click.option("--enable-lora", is_flag=True, help="Accepted for vLLM command lines; adapters are always enabled.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, envvar="LLMCYCLE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes.")
@click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--max-num-seqs", type=click.IntRange(1), default=64, show_default=True, help="Sequences decoded together.")
@click.option("--max-queued-requests", type=click.IntRange(0), default=1024, show_default=True, help="Waiting requests before 429.")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=None, help="Seconds a request may take.")
@click.option("--max-model-len", type=click.IntRange(1), default=None, help="Context window (default: the model's).")
@click.option("--max-request-bytes", type=click.IntRange(1), default=1 << 20, show_default=True, help="Largest request body (413 above).")
@click.option("--allow-adapter-loading", is_flag=True, help="Enable /v1/load_lora_adapter and /v1/unload_lora_adapter.")
@click.option("--engine", type=click.Choice(["llmcycle", "vllm"]), default="llmcycle", show_default=True,
              help="vllm: start vLLM's own OpenAI server with the same base and LoRA adapters.")
def serve(extra, model, adapters, lora_modules, enable_lora, engine, **kwargs):
    """Serve the model and its adapters with the OpenAI API (/v1/completions, /v1/chat/completions)."""
    from ..deploy.serve.app import ServerConfig

    model, extra = split_positionals(model, lora_modules, extra)
    pairs = parse_adapters(adapters) + parse_lora_modules(lora_modules, extra)
    config = ServerConfig(model=model, adapters=pairs, **kwargs)
    if engine == "vllm":
        from ..deploy.serve.vllm import run_vllm

        run_vllm(config)  # does not return: vLLM's server takes over the process
    run(config)


def cpu_threads() -> None:
    """On a CPU, leave one core to the HTTP side: torch's spinning worker threads otherwise take it from the
    event loop and slow every step several times over (measured in bench/serve_throughput.py)."""
    import os

    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))


def run(config) -> None:
    from ..deploy.serve.app import RunningServer, bind
    from ..deploy.serve.models import check_servable

    check_servable(config.model, config.adapters, config.trust_remote_code)
    cpu_threads()
    sock = bind(config.host, config.port)
    server = RunningServer(config, sock)
    names = [(config.served_model_name or Path(config.model.rstrip("/")).name, "base model")]
    names += [(name, f"adapter {path}") for name, path in config.adapters]
    print_banner(server.url, names, config.api_key)
    server.on_ready = lambda: note(f"ready: {len(names)} served name(s) loaded")
    note("loading the model; /health answers 503 until it is ready")
    server.run()
    error = server.state.load_error
    if error is not None:
        raise error
    note("server stopped")


COMMANDS = [serve]
