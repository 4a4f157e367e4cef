"""vLLM's /tokenize and /detokenize: the served tokenizer, for clients that count or build tokens on the server.

Request and answer follow vLLM's: /tokenize takes `prompt` (with `add_special_tokens`, default true) or chat
`messages` (rendered by the chat template as /v1/chat/completions renders them, with its `add_generation_prompt`,
default true, `continue_final_message`, `chat_template_kwargs` and `tools`; `add_special_tokens` default false)
and answers `{count, max_model_len, tokens, token_strs}` (`token_strs` with `return_token_strs`); /detokenize takes
`tokens` and answers `{prompt}`. As in vLLM, they sit outside /v1 and
need no API key: they say nothing a client could not compute from the model's public tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable

from .chat import chat_shape, parse_messages, render_chat
from .guided import template_has_tools
from .handling import check_in_vocabulary, lookup
from .models import ServedModels
from .protocol import bad, flag


def _checked_model(served: ServedModels, data: dict) -> None:
    if data.get("model") is not None:
        if not isinstance(data["model"], str):
            raise bad("model", "'model' must be a string")
        lookup(served, data["model"])


def tokenize_body(served: ServedModels, window: int | None, render: Callable, data: dict) -> dict:
    """`render`: the chat route's models.chat_renderer, so that a chat counts the tokens the chat route sends."""
    _checked_model(served, data)
    tokenizer = served.loaded.tokenizer
    if "messages" in data:
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bad("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects")
        tools = tools if template_has_tools(tokenizer) else None  # as the chat route: only a template with tools renders them
        text = render_chat(render, parse_messages(data["messages"]), chat_shape(data), tools)
        special = flag(data, "add_special_tokens", False)
    elif isinstance(data.get("prompt"), str):
        text, special = data["prompt"], flag(data, "add_special_tokens", True)
    else:
        raise bad("prompt", "give 'prompt' (a string) or 'messages' (a chat)")
    tokens = tokenizer(text, add_special_tokens=special)["input_ids"]
    strs = tokenizer.convert_ids_to_tokens(tokens) if flag(data, "return_token_strs") else None
    return {"count": len(tokens), "max_model_len": window, "tokens": tokens, "token_strs": strs}


def detokenize_body(served: ServedModels, data: dict) -> dict:
    _checked_model(served, data)
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise bad("tokens", "'tokens' must be a list of token ids (integers from 0)")
    check_in_vocabulary(served, tokens, "tokens")
    return {"prompt": served.loaded.tokenizer.decode(tokens)}
