"""`llmcycle serve`'s flags are ServerConfig's fields: the same flags as ever, each default written once."""

from __future__ import annotations

import dataclasses

import click

from llmcycle.cli.serve import serve
from llmcycle.config import field_docs
from llmcycle.deploy.serve.config import ServerConfig, served_name

FLAGS = ["--model", "--adapter", "--lora-modules", "--served-model-name", "--enable-lora", "--host", "--port", "--api-key",
         "--dtype", "--trust-remote-code", "--max-num-seqs", "--max-queued-requests", "--request-timeout", "--max-model-len",
         "--max-request-bytes", "--allow-adapter-loading", "--engine"]


def options() -> dict[str, click.Option]:
    return {param.name: param for param in serve.params if isinstance(param, click.Option) and param.name != "help"}


def test_flags_are_the_fields_in_order_with_vllm_spellings():
    assert [next(opt for opt in param.opts if opt.startswith("--")) for param in options().values()] == FLAGS
    aliases = {"lora_modules", "enable_lora"}  # vLLM's spellings of --adapter and of "adapters are on"
    assert set(options()) - aliases == {item.name for item in dataclasses.fields(ServerConfig)}


def test_defaults_and_help_come_from_the_dataclass():
    docs, flags = field_docs(ServerConfig), options()
    defaults = ServerConfig(model="m")
    for item in dataclasses.fields(ServerConfig):
        flag = flags[item.name]
        default = list(flag.default) if flag.multiple else flag.default
        assert default == (None if item.name == "model" else getattr(defaults, item.name)), item.name
        assert flag.help == docs[item.name], item.name
    assert flags["max_num_seqs"].default == 64 and flags["max_num_seqs"].show_default
    assert flags["max_num_seqs"].type.min == 1 and flags["request_timeout"].type.min_open
    assert flags["api_key"].envvar == "LLMCYCLE_API_KEY" and flags["adapters"].multiple and flags["trust_remote_code"].is_flag
    assert list(flags["dtype"].type.choices) == ["auto", "float32", "bfloat16", "float16"]


def test_served_name_of_the_base():
    assert served_name("runs/lora/") == "lora" and served_name("org/model", "mine") == "mine"
    assert ServerConfig("runs/x", served_model_name=None).base_name == "x"

