"""A request's events as OpenAI's answer: one JSON body, or server-sent events (`data: {chunk}`, then
`data: [DONE]`), in the shapes of the completions and chat completions APIs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from .bridge import Submitted
from .guided import tool_replies, tool_stream
from .jobs import TextDelta
from .logprobs import chat_json, completion_json
from .protocol import APIError, ParsedRequest


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(parsed: ParsedRequest, chunk: bool) -> dict:
    """The fields every body or chunk of one answer starts with (a new id and time per answer)."""
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if parsed.chat else "text_completion"
    request_id = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": parsed.model}


def choice_body(parsed: ParsedRequest, index: int, text: str | None, finish: str | None, chunk: bool,
                logprobs: dict | None = None) -> dict:
    if not parsed.chat:
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    if chunk:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish}


def logprobs_body(parsed: ParsedRequest, entries: list, offset: int) -> dict | None:
    """A choice's (or chunk's) log-probabilities in the API's shape, None when not asked for; completions' text
    offsets count from `offset`."""
    if parsed.params.logprobs is None:
        return None
    return chat_json(entries) if parsed.chat else completion_json(entries, offset)


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def choice_count(parsed: ParsedRequest) -> int:
    return len(parsed.prompts) * parsed.params.n


async def collect(request: Request, submitted: Submitted) -> tuple[list[str], list[str | None], list[list]]:
    """Every choice's text (after chat's echoed message), finish reason and log-probability entries, once all
    finished."""
    parsed, answer = submitted.parsed, submitted.answer
    count = choice_count(parsed)
    texts, reasons, entries = [parsed.reply_prefix] * count, [None] * count, [[] for _ in range(count)]
    try:
        while answer.remaining:
            index, event = await answer.next(request)
            if isinstance(event, TextDelta):
                texts[index] += event.text
                entries[index] += event.logprobs
            else:
                reasons[index] = event.reason
    finally:
        submitted.release()
    return texts, reasons, entries


async def answer_json(request: Request, submitted: Submitted) -> dict:
    """The whole answer once every choice finished."""
    parsed, answer = submitted.parsed, submitted.answer
    texts, reasons, entries = await collect(request, submitted)
    count = choice_count(parsed)
    body = envelope(parsed, chunk=False)
    body["choices"] = [choice_body(parsed, i, texts[i], reasons[i], False, logprobs_body(parsed, entries[i], 0))
                       for i in range(count)]
    tool_replies(parsed, body["choices"], texts, reasons)
    body["usage"] = usage(submitted.prompt_tokens, answer.completion_tokens)
    return body


class StreamUsage:
    """What a chunk carries under `usage`: nothing unless asked; null with include_usage (the last chunk holds the
    total); with vLLM's continuous_usage_stats, the choice's prompt and completion tokens so far, as vLLM counts
    them per choice."""

    def __init__(self, submitted: Submitted):
        parsed = submitted.parsed
        self.asked, self.continuous = parsed.include_usage, parsed.continuous_usage
        self.prompts = [len(job.prompt_ids) for job in submitted.jobs for _ in range(parsed.params.n)]
        self.generated = [0] * len(self.prompts)

    def count(self, index: int, event) -> None:
        self.generated[index] = event.generated if isinstance(event, TextDelta) else event.completion_tokens

    def field(self, index: int) -> dict:
        if not self.asked:
            return {}
        return {"usage": usage(self.prompts[index], self.generated[index]) if self.continuous else None}


async def answer_stream(submitted: Submitted) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, a finishing chunk per choice, usage if asked, [DONE].

    Chunks already at hand go out in one write (the finishing chunk, usage and [DONE] after the last text; the
    events of several steps when the loop fell behind): each write is a TCP segment the client reads on its own.
    Nothing waits for more: what is ready is sent before the next event is awaited."""
    parsed, answer = submitted.parsed, submitted.answer
    head = envelope(parsed, chunk=True)
    counted = StreamUsage(submitted)
    held = tool_stream(parsed)
    offsets = [0] * choice_count(parsed)  # completions' text offset reached by each choice
    ready: list[str] = []
    try:
        if parsed.chat:
            for index in range(choice_count(parsed)):
                role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ready.append(sse({**head, "choices": [role], **counted.field(index)}))
                if parsed.reply_prefix:  # chat's echo: the message being continued comes first
                    echoed = choice_body(parsed, index, parsed.reply_prefix, None, True)
                    ready.append(sse({**head, "choices": [echoed], **counted.field(index)}))
        while answer.remaining:
            if ready and answer.queue.empty():
                yield "".join(ready)
                ready.clear()
            try:
                index, event = await answer.next(None)
            except APIError as error:
                ready.append(sse(error.body()))
                break
            counted.count(index, event)
            if held is not None:  # a tool call is sent whole, once its choice finished
                ready += [sse({**head, "choices": [choice], **counted.field(index)}) for choice in held.push(index, event)]
                continue
            text, finish = (event.text, None) if isinstance(event, TextDelta) else (None, event.reason)
            logprobs = logprobs_body(parsed, list(event.logprobs), offsets[index]) if text is not None else None
            offsets[index] += sum(len(item.token) for item in event.logprobs) if text is not None else 0
            ready.append(sse({**head, "choices": [choice_body(parsed, index, text, finish, True, logprobs)], **counted.field(index)}))
        if parsed.include_usage and not answer.remaining:
            ready.append(sse({**head, "choices": [], "usage": usage(submitted.prompt_tokens, answer.completion_tokens)}))
        ready.append(sse("[DONE]"))
        yield "".join(ready)
    finally:
        submitted.release()
