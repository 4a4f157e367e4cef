"""`llmcycle serve`: the base model and its adapters behind an OpenAI-compatible HTTP API.

vLLM's spellings are taken too (`--lora-modules NAME=DIR [NAME=DIR ...]`, `--served-model-name`, `--enable-lora`,
a positional model), so a vLLM command line mostly carries over.
"""

from __future__ import annotations

import json

import click

from ..console import note, out, print_table
from ..deploy.serve.config import ServerConfig
from ..errors import UserError
from .options import apply, parse_adapters, settings_options


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


SERVER_FLAGS = settings_options(ServerConfig, adapters={"param_decls": ["--adapter"], "metavar": "NAME=DIR"},
                                api_key={"envvar": "LLMCYCLE_API_KEY"})
# vLLM's spellings, listed beside the flags they stand for; they set no field of their own
LORA_MODULES = click.option("--lora-modules", multiple=True, metavar="NAME=DIR",
                            help="vLLM's spelling of --adapter; several may follow one flag.")
ENABLE_LORA = click.option("--enable-lora", is_flag=True, help="Accepted for vLLM command lines; adapters are always enabled.")


def server_flags(func):
    """A flag for every field of ServerConfig, with vLLM's spellings beside --adapter and --served-model-name."""
    flags = dict(SERVER_FLAGS)
    first = [flags.pop("model"), flags.pop("adapters"), LORA_MODULES, flags.pop("served_model_name"), ENABLE_LORA]
    return apply([*first, *flags.values()], func)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("extra", nargs=-1, metavar="[MODEL]")
@server_flags
def serve(extra, model, adapters, lora_modules, enable_lora, **flags):
    """Serve the model and its adapters with the OpenAI API (/v1/completions, /v1/chat/completions)."""
    model, extra = split_positionals(model, lora_modules, extra)
    pairs = parse_adapters(adapters) + parse_lora_modules(lora_modules, extra)
    config = ServerConfig(model=model, adapters=pairs, **flags)
    if config.engine == "vllm":
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


def run(config: ServerConfig) -> None:
    from ..deploy.serve.models import check_servable
    from ..deploy.serve.listening import bind
    from ..deploy.serve.server import RunningServer

    check_servable(config.model, config.adapters, config.trust_remote_code)
    cpu_threads()
    sock = bind(config.host, config.port)
    server = RunningServer(config, sock)
    names = [(config.base_name, "base model")]
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
