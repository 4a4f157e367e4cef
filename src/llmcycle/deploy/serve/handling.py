"""One request, from its body to the engine: size limit, API key, the model it names, its token ids checked
against the vocabulary and the context window, then one job per prompt queued with the engine and answered as
JSON or server-sent events (render.py)."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ...models import chat_renderer
from .bridge import Answer, Mailbox, Submitted
from .engine import QueueFull
from .guided import check_guide
from .jobs import Job
from .models import Adapter, ServedModels
from .protocol import APIError, ParsedRequest, bad, context_error
from .render import answer_json, answer_stream
from .state import ServerState

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; this server takes at most {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over {limit} bytes, the most this server takes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the server's --api-key",
                       code="invalid_api_key")


def lookup(served: ServedModels, name: str) -> Adapter | None:
    """The adapter serving `name` (None for the plain base), or 404."""
    try:
        return served.adapter_for(name)
    except KeyError:
        raise APIError(404, f"the model '{name}' does not exist; served: {', '.join(served.names)}", param="model",
                       code="model_not_found") from None


def served_renderer(state: ServerState, served: ServedModels):
    """models.chat_renderer's (messages, add_generation_prompt, **template) -> prompt text for the served tokenizer,
    made once (its fallback notes itself once); /v1/chat/completions and /tokenize share it."""
    if state.render is None:
        state.render = chat_renderer(served.loaded.tokenizer)
    return state.render


def prompt_ids(served: ServedModels, parsed: ParsedRequest) -> list[list[int]]:
    """Token ids of each prompt, checked against the vocabulary."""
    tokenizer = served.loaded.tokenizer
    special = parsed.add_special_tokens
    if special is None:  # chat's default: templates write their own BOS, the plain layout gets the tokenizer's
        special = not (parsed.chat and getattr(tokenizer, "chat_template", None))
    param = "messages" if parsed.chat else "prompt"
    ids = []
    for prompt in parsed.prompts:
        tokens = tokenizer(prompt, add_special_tokens=special)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise bad(param, f"the {param} is empty: it has no tokens")
        check_in_vocabulary(served, tokens, param)
        ids.append(tokens)
    return ids


def check_in_vocabulary(served: ServedModels, tokens: list[int], param: str) -> None:
    """400 when a (non-negative) token id is past the model's vocabulary."""
    vocab = served.loaded.model.get_input_embeddings().num_embeddings
    if tokens and max(tokens) >= vocab:
        raise bad(param, f"token id {max(tokens)} is outside the vocabulary (0 to {vocab - 1})")


def settle_max_tokens(window: int | None, served: ServedModels, parsed: ParsedRequest, ids: list[list[int]], virtual: int) -> None:
    """Fill in the default max_tokens and refuse what does not fit the context window (400, naming the limit)."""
    params = parsed.params
    reserve = not served.loaded.is_encoder_decoder  # decoder-only models hold prompt and completion in one window
    longest = max(len(tokens) for tokens in ids) + virtual
    param = "messages" if parsed.chat else "prompt"
    if window is not None and longest > window - (1 if reserve else 0):
        raise context_error(window, longest - virtual, params.max_tokens or 1, reserve, param)
    if params.max_tokens is None:
        room = (window - longest) if (window is not None and reserve) else (window or 512)
        params.max_tokens = min(DEFAULT_COMPLETION_TOKENS, room) if not parsed.chat else room
    if window is not None and reserve and longest + params.max_tokens > window:
        raise context_error(window, longest - virtual, params.max_tokens, reserve, "max_tokens")
    if params.min_tokens > params.max_tokens:
        raise bad("min_tokens", f"'min_tokens' ({params.min_tokens}) must be at most max_tokens ({params.max_tokens})")


def check_logit_bias(served: ServedModels, parsed: ParsedRequest) -> None:
    vocab = served.loaded.model.get_input_embeddings().num_embeddings
    outside = [token for token in parsed.params.logit_bias if token >= vocab]
    if outside:
        raise bad("logit_bias", f"'logit_bias' names token id {outside[0]}, outside the vocabulary (0 to {vocab - 1})")


def check_echo(served: ServedModels, parsed: ParsedRequest) -> None:
    if parsed.params.echo and parsed.params.logprobs is not None and served.loaded.is_encoder_decoder:
        raise bad("echo", "'echo' with 'logprobs' needs a decoder-only model: an encoder-decoder model reads its prompt "
                          "with the encoder and gives it no log-probabilities")


def echo_text(served: ServedModels, prompt, tokens: list[int]) -> str:
    """The prompt as sent back by `echo`: its text, or token ids decoded (special tokens kept, as they were sent)."""
    return prompt if isinstance(prompt, str) else served.loaded.tokenizer.decode(tokens)


def submit(state: ServerState, parsed: ParsedRequest) -> Submitted:
    """Check the request against the served model and queue one job per prompt (429 when the queue is full)."""
    served, engine = state.ready()
    adapter = lookup(served, parsed.model)
    check_guide(parsed.guide, engine.sampler.grammars())
    ids = prompt_ids(served, parsed)
    check_logit_bias(served, parsed)
    check_echo(served, parsed)
    settle_max_tokens(state.window, served, parsed, ids, adapter.virtual_tokens if adapter is not None else 0)
    n = parsed.params.n
    if state.mailbox is None:
        state.mailbox = Mailbox(asyncio.get_running_loop())
    answer = Answer(len(ids) * n, state.mailbox)
    jobs = [Job(parsed.model, adapter, tokens, parsed.params, answer.sink(index * n), timeout=state.config.request_timeout,
                echo=echo_text(served, prompt, tokens) if parsed.params.echo else None)
            for index, (prompt, tokens) in enumerate(zip(parsed.prompts, ids))]
    try:
        engine.submit(jobs)
    except QueueFull:
        raise APIError(429, f"the queue is full ({state.config.max_queued_requests} requests waiting); retry shortly",
                       code="queue_full", headers={"Retry-After": "1"}) from None
    return Submitted(parsed, jobs, answer, sum(len(tokens) for tokens in ids), engine)


def event_stream(events) -> StreamingResponse:
    """Server-sent events, not to be cached on the way."""
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def respond(state: ServerState, request: Request, parsed: ParsedRequest):
    submitted = submit(state, parsed)
    if parsed.stream:
        return event_stream(answer_stream(submitted))
    return JSONResponse(await answer_json(request, submitted))
