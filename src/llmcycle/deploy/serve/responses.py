"""OpenAI's Responses API (`POST /v1/responses`), as vLLM serves it, over the chat route's machinery.

A Responses request is translated into the chat completion it means (instructions as a system message, input
items as messages, an earlier `function_call` as an assistant's tool call and its `function_call_output` as a
tool message, `text.format` as `response_format`, flat function tools as chat's nested ones), so it is checked,
rendered by the chat template, constrained and decoded exactly as /v1/chat/completions would be; only the
answer's shape differs: a `response` object whose `output` holds a message with `output_text`, or a
`function_call`, and for `stream: true` the typed events (`response.created`, `response.output_text.delta`, ...,
`response.completed`) the `openai` client's `responses.stream` assembles.

Nothing is stored, as vLLM stores nothing unless told to: `previous_response_id` is a 400 that says to send the
conversation in `input`, and `store` is answered as false. The sampling extras vLLM's Responses request takes
(`ignore_eos`, `top_k`, `repetition_penalty`, `stop`, `structured_outputs`, ...) pass to chat under the same names,
so each is honoured or refused there as on chat. Fields that would change the answer and cannot be honoured here
(hosted tools such as web search, `include` of extra outputs, `top_logprobs`, `background`) are 400s naming them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from .bridge import Submitted
from .guided import tool_call
from .jobs import TextDelta
from .protocol import APIError, bad
from .render import collect

REFUSED = {  # Responses fields that would change the answer and that this server cannot honour
    "previous_response_id": "responses are not stored by this server: send the whole conversation in 'input'",
    "background": "background responses are not supported: responses are answered while the request waits",
    "conversation": "conversations are not stored by this server: send the whole conversation in 'input'",
    "prompt": "stored prompt templates are not supported: send the prompt in 'input'",
}
TEXT_PARTS = ("input_text", "output_text", "text")
PASSED = (  # fields chat takes under the same name: OpenAI's, and the sampling extras vLLM's Responses request takes
    "model", "temperature", "top_p", "stream", "user", "seed", "stop", "logit_bias", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "top_k", "min_p", "min_tokens", "ignore_eos", "no_repeat_ngram_size", "stop_token_ids",
    "include_stop_str_in_output", "skip_special_tokens", "structured_outputs", "chat_template_kwargs",
)
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


def chat_body(data: dict) -> dict:
    """The chat completion request that `data` (a Responses request) means."""
    for name, why in REFUSED.items():
        if data.get(name) not in (None, False):
            raise bad(name, f"'{name}' is not supported: {why}")
    if data.get("include"):
        raise bad("include", "'include' is not supported: this server adds no extra outputs to a response")
    if data.get("top_logprobs"):
        raise bad("top_logprobs", "'top_logprobs' is not supported in /v1/responses by this server; ask "
                                  "/v1/chat/completions with 'logprobs': true")
    body = {key: data[key] for key in PASSED if key in data}
    body["messages"] = _messages(data.get("input"), data.get("instructions"))
    if data.get("max_output_tokens") is not None:
        body["max_tokens"] = data["max_output_tokens"]
    if data.get("text") is not None:
        body["response_format"] = _text_format(data["text"])
    if data.get("tools") is not None:
        body["tools"] = _tools(data["tools"])
    if data.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(data["tool_choice"])
    return body


def renamed(error: APIError) -> APIError:
    """A chat-side error with the field named as the Responses request names it."""
    param = error.param or ""
    for chat, ours in PARAMS.items():
        if param == chat or param.startswith(chat + "["):
            error.param = ours
            error.message = error.message.replace(f"'{chat}'", f"'{ours}'")
    if param.startswith("tools[") and param.endswith(".function.parameters"):
        error.param = param.replace(".function.parameters", ".parameters")
    return error


# ---- input ----

def _messages(items, instructions) -> list[dict]:
    if instructions is not None and not isinstance(instructions, str):
        raise bad("instructions", "'instructions' must be a string")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad("input", "'input' must be a string or a non-empty list of input items")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad(f"input[{index}]", f"input[{index}] must be an object, such as {{\"role\": \"user\", \"content\": ...}}")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _text(item.get("content"), index)})
        elif kind == "function_call":
            messages.append(_call(item, index, messages))
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
                raise bad(f"input[{index}]", f"input[{index}] (function_call_output) needs a 'call_id' and an 'output' string")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        else:
            raise bad(f"input[{index}].type", f"input item type '{kind}' is not supported: give messages, "
                                              "function_call and function_call_output items")
    return messages


def _text(content, index: int) -> str:
    """A message's text: a string, or its text parts joined (images and files are refused, naming the part)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"input[{index}].content", f"input[{index}].content must be a string or a list of input_text parts")
    for number, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise bad(f"input[{index}].content[{number}]", f"content part type '{kind}' is not supported: this server "
                                                          "reads text parts ({\"type\": \"input_text\", \"text\": ...})")
    return "".join(part["text"] for part in content)


def _call(item: dict, index: int, messages: list[dict]) -> dict:
    """An earlier function call as an assistant message's tool call (consecutive calls share one message)."""
    if not all(isinstance(item.get(key), str) for key in ("call_id", "name", "arguments")):
        raise bad(f"input[{index}]", f"input[{index}] (function_call) needs 'call_id', 'name' and 'arguments' strings")
    call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
    if messages and messages[-1].get("role") == "assistant" and messages[-1].get("tool_calls"):
        previous = messages.pop()
        return {**previous, "tool_calls": [*previous["tool_calls"], call]}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


# ---- text format and tools ----

def _text_format(text) -> dict:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        if isinstance(text, dict):
            return {"type": "text"}
        raise bad("text", "'text' must be an object such as {\"format\": {\"type\": \"json_schema\", ...}}")
    if not isinstance(fmt, dict):
        raise bad("text.format", "'text.format' must be an object with a 'type'")
    if fmt.get("type") == "json_schema":  # flat in Responses, nested under json_schema in chat
        return {"type": "json_schema", "json_schema": {key: fmt.get(key) for key in ("name", "schema", "strict")}}
    return fmt


def _tools(tools) -> list:
    if not isinstance(tools, list):
        raise bad("tools", "'tools' must be a list of {\"type\": \"function\", \"name\": ..., \"parameters\": ...} objects")
    functions = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise bad(f"tools[{index}]", f"tools of type '{kind}' are not supported: this server calls functions only")
        functions.append({"type": "function", "function": {key: tool[key] for key in ("name", "description", "parameters")
                                                           if key in tool}})
    return functions


def _tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


# ---- answers ----

def _envelope(data: dict, parsed, response_id: str, created: float) -> dict:
    """The response object's fields that echo the request."""
    fmt = data.get("text") or {"format": {"type": "text"}}
    return {
        "id": response_id, "object": "response", "created_at": created, "model": parsed.model,
        "instructions": data.get("instructions"), "max_output_tokens": data.get("max_output_tokens"),
        "temperature": parsed.params.temperature, "top_p": parsed.params.top_p, "tools": data.get("tools") or [],
        "tool_choice": data.get("tool_choice") or "auto", "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "text": fmt, "metadata": data.get("metadata") or {}, "previous_response_id": None, "reasoning": None,
        "store": False, "truncation": data.get("truncation") or "disabled", "user": data.get("user"), "error": None,
    }


def _output_item(parsed, text: str, reason: str | None, message_id: str | None = None) -> dict:
    """The reply as a `function_call` (a forced tool call; one cut short is `incomplete`) or a `message` with
    `output_text`."""
    tool = parsed.guide.tool if parsed.guide is not None else None
    call = tool_call(tool, text, complete=reason == "stop") if tool is not None else None
    if call is not None:  # a call cut by max_output_tokens keeps its arguments as far as they got, as chat's does
        return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call["id"], "name": call["function"]["name"],
                "arguments": call["function"]["arguments"], "status": "completed" if reason == "stop" else "incomplete"}
    return {"type": "message", "id": message_id or f"msg_{uuid.uuid4().hex}",
            "status": "completed" if reason == "stop" else "incomplete", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _finished(head: dict, item: dict, reason: str | None, prompt_tokens: int, completion_tokens: int) -> dict:
    cut = reason == "length"
    return {**head, "status": "incomplete" if cut else "completed", "completed_at": time.time(),
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "output": [item],
            "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt_tokens + completion_tokens}}


async def response_json(request: Request, submitted: Submitted, data: dict) -> dict:
    texts, reasons, _ = await collect(request, submitted)
    parsed = submitted.parsed
    head = _envelope(data, parsed, f"resp_{uuid.uuid4().hex}", time.time())
    item = _output_item(parsed, texts[0], reasons[0])
    return _finished(head, item, reasons[0], submitted.prompt_tokens, submitted.answer.completion_tokens)


class _Events:
    """Server-sent events numbered in order, each also named by its type (`event:`), as OpenAI sends them."""

    def __init__(self):
        self.number = 0

    def __call__(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def response_stream(submitted: Submitted, data: dict) -> AsyncIterator[str]:
    """created, in_progress, then the reply's item: a message's text deltas as they come (a forced tool call is
    sent whole once it finished, as its arguments are one JSON value), then completed, whose response says whether
    the reply was cut (status "incomplete")."""
    parsed, answer = submitted.parsed, submitted.answer
    event = _Events()
    head = _envelope(data, parsed, f"resp_{uuid.uuid4().hex}", time.time())
    holds = parsed.guide is not None and parsed.guide.tool is not None
    message = {"type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    text, reason = "", None
    try:
        yield event("response.created", response={**head, "status": "in_progress", "output": []})
        yield event("response.in_progress", response={**head, "status": "in_progress", "output": []})
        if not holds:
            yield event("response.output_item.added", output_index=0, item=message)
            yield event("response.content_part.added", part=part, **where)
        while answer.remaining:
            try:
                _, update = await answer.next(None)
            except APIError as error:
                yield event("error", code=error.code, message=error.message, param=error.param)
                return
            if isinstance(update, TextDelta):
                text += update.text
                if update.text and not holds:
                    yield event("response.output_text.delta", delta=update.text, logprobs=[], **where)
            else:
                reason = update.reason
        item = _output_item(parsed, text, reason, message["id"])
        if item["type"] == "function_call":
            async for line in _call_events(event, item):
                yield line
        else:
            if holds:  # a cut reply that named no function yet (several tools): answered as the text it got to
                yield event("response.output_item.added", output_index=0, item=message)
                yield event("response.content_part.added", part=part, **where)
                if text:
                    yield event("response.output_text.delta", delta=text, logprobs=[], **where)
            yield event("response.output_text.done", text=text, logprobs=[], **where)
            yield event("response.content_part.done", part={**part, "text": text}, **where)
            yield event("response.output_item.done", output_index=0, item=item)
        done = _finished(head, item, reason, submitted.prompt_tokens, answer.completion_tokens)
        yield event("response.completed", response=done)  # as vLLM ends every stream, a cut one too (status "incomplete")
    finally:
        submitted.release()


async def _call_events(event, item: dict) -> AsyncIterator[str]:
    where = {"item_id": item["id"], "output_index": 0}
    yield event("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
    yield event("response.function_call_arguments.delta", delta=item["arguments"], **where)
    yield event("response.function_call_arguments.done", arguments=item["arguments"], name=item["name"], **where)
    yield event("response.output_item.done", output_index=0, item=item)
