"""The HTTP side of `llmcycle serve`: OpenAI's routes on FastAPI, served by uvicorn.

Handlers check the request, tokenize, queue one job per prompt with the engine and turn its events into a JSON
answer or server-sent events (`data: {chunk}`, then `data: [DONE]`). A client that goes away cancels its jobs,
which leave the batch at the next step. The model loads in the background, so `/health` and every model route
answer 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import UserError
from ...models import chat_renderer
from .engine import Engine, Job, QueueFull
from .metrics import Metrics
from .models import ServedModels, add_adapter, load_served, remove_adapter
from .protocol import APIError, ParsedRequest, bad, context_error, parse_chat, parse_completion, parse_json

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass
class ServerConfig:
    """What `llmcycle serve` was started with."""

    model: str
    adapters: list[tuple[str, str]] = field(default_factory=list)
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_num_seqs: int = 64
    max_queued_requests: int = 1024
    request_timeout: float | None = None
    max_model_len: int | None = None
    max_request_bytes: int = 1 << 20
    allow_adapter_loading: bool = False


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics
    served: ServedModels | None = None
    engine: Engine | None = None
    window: int | None = None
    load_error: Exception | None = None
    render: object = None
    mailbox: object = None

    def ready(self) -> tuple[ServedModels, Engine]:
        if self.served is None or self.engine is None:
            raise APIError(503, "the model is still loading; retry when GET /health answers 200")
        return self.served, self.engine


def load_state(state: ServerState) -> None:
    """Load the model and adapters and start the engine (run in a background thread)."""
    config = state.config
    try:
        served = load_served(config.model, config.adapters, served_name=config.served_model_name,
                             dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        state.window = checked_window(served, config.max_model_len)
        engine = Engine(served, state.metrics, max_num_seqs=config.max_num_seqs, max_queued=config.max_queued_requests)
        engine.start()
        state.served, state.engine = served, engine
    except Exception as exc:  # reported by whoever started the server
        state.load_error = exc


def checked_window(served: ServedModels, max_model_len: int | None) -> int | None:
    window = served.loaded.context_window
    if max_model_len is not None and window is not None and max_model_len > window:
        raise UserError(f"--max-model-len {max_model_len} is longer than the model's context window of {window}")
    return max_model_len or window


# ---- request handling ----

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


def lookup(served: ServedModels, name: str):
    try:
        return served.adapter_for(name)
    except KeyError:
        raise APIError(404, f"the model '{name}' does not exist; served: {', '.join(served.names)}", param="model",
                       code="model_not_found") from None


def prompt_ids(state: ServerState, served: ServedModels, parsed: ParsedRequest) -> list[list[int]]:
    """Token ids of each prompt, checked against the vocabulary and the context window."""
    tokenizer = served.loaded.tokenizer
    plain = not (parsed.chat and getattr(tokenizer, "chat_template", None))  # templates write their own BOS
    param = "messages" if parsed.chat else "prompt"
    vocab = served.loaded.model.get_input_embeddings().num_embeddings
    ids = []
    for prompt in parsed.prompts:
        tokens = tokenizer(prompt, add_special_tokens=plain)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise bad(param, f"the {param} is empty: it has no tokens")
        if max(tokens) >= vocab:
            raise bad(param, f"token id {max(tokens)} is outside the vocabulary (0 to {vocab - 1})")
        ids.append(tokens)
    return ids


def settle_max_tokens(state: ServerState, served: ServedModels, parsed: ParsedRequest, ids: list[list[int]], virtual: int) -> None:
    """Fill in the default max_tokens and refuse what does not fit the context window (400, naming the limit)."""
    window, params = state.window, parsed.params
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


class ClientGone(Exception):
    """The client of a JSON answer went away; its jobs are cancelled and nothing is sent."""


class Mailbox:
    """Events from the engine thread to the event loop, handed over in batches: the loop wakes once for the events
    that arrived together (a decoding step's tokens for every request), not once per token."""

    def __init__(self, loop):
        self.loop, self.lock = loop, threading.Lock()
        self.items: list = []
        self.scheduled = False

    def post(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    def _drain(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Answer:
    """The events of one request's jobs, in arrival order, on the event loop."""

    def __init__(self, count: int, mailbox: Mailbox):
        self.mailbox = mailbox
        self.queue: asyncio.Queue = asyncio.Queue()
        self.remaining = count
        self.completion_tokens = 0
        self.checked = time.monotonic()

    def sink(self, offset: int):
        def put(event):
            self.mailbox.post(self.queue, (offset, event))
        return put

    async def next(self, request: Request | None):
        """(choice index, event). Given the request (a JSON answer), checks every second that its client is still
        there; a streaming answer is cancelled by the server when its client goes."""
        while True:
            if request is not None and time.monotonic() - self.checked > 1.0:
                self.checked = time.monotonic()
                if await request.is_disconnected():
                    raise ClientGone()
            try:
                offset, event = await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if event[0] == "error":
                raise event[1]
            if event[0] == "finish":
                self.remaining -= 1
                self.completion_tokens += event[3]
            return offset + event[1], event


def submit(state: ServerState, parsed: ParsedRequest) -> tuple[list[Job], Answer, int]:
    served, engine = state.ready()
    adapter = lookup(served, parsed.model)
    ids = prompt_ids(state, served, parsed)
    virtual = adapter.virtual_tokens if adapter is not None else 0
    settle_max_tokens(state, served, parsed, ids, virtual)
    n = parsed.params.n
    if state.mailbox is None:
        state.mailbox = Mailbox(asyncio.get_running_loop())
    answer = Answer(len(ids) * n, state.mailbox)
    jobs = [Job(parsed.model, adapter, tokens, parsed.params, answer.sink(index * n), timeout=state.config.request_timeout)
            for index, tokens in enumerate(ids)]
    try:
        engine.submit(jobs)
    except QueueFull:
        raise APIError(429, f"the queue is full ({state.config.max_queued_requests} requests waiting); retry shortly",
                       code="queue_full", headers={"Retry-After": "1"}) from None
    return jobs, answer, sum(len(tokens) for tokens in ids)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(parsed: ParsedRequest, request_id: str, created: int, chunk: bool) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if parsed.chat else "text_completion"
    return {"id": request_id, "object": kind, "created": created, "model": parsed.model}


def choice_body(parsed: ParsedRequest, index: int, text: str | None, finish: str | None, chunk: bool) -> dict:
    if not parsed.chat:
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    if chunk:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}


async def answer_json(request: Request, parsed: ParsedRequest, jobs: list[Job], answer: Answer, prompt_tokens: int) -> dict:
    count = len(parsed.prompts) * parsed.params.n
    texts, reasons = [""] * count, [None] * count
    try:
        while answer.remaining:
            index, event = await answer.next(request)
            if event[0] == "text":
                texts[index] += event[2]
            else:
                reasons[index] = event[2]
    finally:
        for job in jobs:
            job.cancelled = job.cancelled or answer.remaining > 0
    body = envelope(parsed, f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()), False)
    body["choices"] = [choice_body(parsed, i, texts[i], reasons[i], False) for i in range(count)]
    body["usage"] = usage(prompt_tokens, answer.completion_tokens)
    return body


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def answer_stream(request: Request, parsed: ParsedRequest, jobs: list[Job], answer: Answer, prompt_tokens: int):
    """Server-sent events: one chunk per piece of text, a finishing chunk per choice, usage if asked, [DONE]."""
    head = envelope(parsed, f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()), True)
    extra = {"usage": None} if parsed.include_usage else {}
    try:
        if parsed.chat:
            for index in range(len(parsed.prompts) * parsed.params.n):
                role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                yield sse({**head, "choices": [role], **extra})
        while answer.remaining:
            try:
                index, event = await answer.next(None)
            except APIError as error:
                yield sse(error.body())
                break
            text, finish = (event[2], None) if event[0] == "text" else (None, event[2])
            yield sse({**head, "choices": [choice_body(parsed, index, text, finish, True)], **extra})
        if parsed.include_usage and not answer.remaining:
            yield sse({**head, "choices": [], "usage": usage(prompt_tokens, answer.completion_tokens)})
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancelled = job.cancelled or answer.remaining > 0


async def respond(state: ServerState, request: Request, parsed: ParsedRequest):
    jobs, answer, prompt_tokens = submit(state, parsed)
    if parsed.stream:
        return StreamingResponse(answer_stream(request, parsed, jobs, answer, prompt_tokens), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return JSONResponse(await answer_json(request, parsed, jobs, answer, prompt_tokens))


def chat_render(state: ServerState, served: ServedModels):
    """messages -> prompt text with the tokenizer's chat template (made once: its fallback notes itself once)."""
    if state.render is None:
        render = chat_renderer(served.loaded.tokenizer)
        state.render = lambda messages: render(messages, True)
    return state.render


# ---- the app ----

def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="llmcycle serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llmcycle = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error_response(error)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone):
        return Response(status_code=499)  # nginx's "client closed request"; no one reads it

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(APIError(error.status_code, str(error.detail)))

    add_open_routes(app, state)
    add_model_routes(app, state)
    add_adapter_routes(app, state)
    return app


def add_open_routes(app: FastAPI, state: ServerState) -> None:
    """Routes without the API key: the playground, /health and /metrics."""

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        html = PLAYGROUND.read_text() if PLAYGROUND.is_file() else "<p>llmcycle serve</p>"
        return HTMLResponse(html.replace("__NEEDS_KEY__", "true" if state.config.api_key else "false"))

    @app.get("/health")
    async def health():
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


def add_model_routes(app: FastAPI, state: ServerState) -> None:
    limit = state.config.max_request_bytes

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, state.config.api_key)
        served, _ = state.ready()
        return {"object": "list", "data": served.cards()}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str, request: Request):
        check_key(request, state.config.api_key)
        served, _ = state.ready()
        lookup(served, name)
        return next(card for card in served.cards() if card["id"] == name)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request, state.config.api_key)
        data = parse_json(await read_body(request, limit))
        state.ready()
        return await respond(state, request, parse_completion(data, max_n=state.config.max_num_seqs))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request, state.config.api_key)
        data = parse_json(await read_body(request, limit))
        served, _ = state.ready()
        return await respond(state, request, parse_chat(data, chat_render(state, served), max_n=state.config.max_num_seqs))


def add_adapter_routes(app: FastAPI, state: ServerState) -> None:
    """vLLM's runtime adapter routes, only with --allow-adapter-loading."""

    async def body_of(request: Request, fields: tuple[str, ...]) -> tuple[ServedModels, Engine, dict]:
        if not state.config.allow_adapter_loading:
            raise APIError(404, "adapter loading is off; start the server with --allow-adapter-loading")
        check_key(request, state.config.api_key)
        data = parse_json(await read_body(request, state.config.max_request_bytes))
        for name in fields:
            if not isinstance(data.get(name), str) or not data[name]:
                raise bad(name, f"'{name}' is required")
        served, engine = state.ready()
        return served, engine, data

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(request: Request):
        served, engine, data = await body_of(request, ("lora_name", "lora_path"))
        try:
            await asyncio.wrap_future(engine.call(lambda: add_adapter(served, data["lora_name"], data["lora_path"])))
        except UserError as exc:
            raise bad("lora_path", str(exc)) from exc
        return PlainTextResponse(f"Success: LoRA adapter '{data['lora_name']}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(request: Request):
        served, engine, data = await body_of(request, ("lora_name",))
        name = data["lora_name"]
        if name not in served.names or name == served.base_name:
            raise APIError(404, f"no adapter named '{name}' is served", param="lora_name", code="model_not_found")
        await asyncio.wrap_future(engine.call(lambda: unload(engine, served, name)))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def unload(engine: Engine, served: ServedModels, name: str) -> None:
    """Remove an adapter between steps; requests using it fail first (their rows cannot run without it)."""
    for row in engine.rows:
        if row.job.name == name:
            row.job.cancelled = True
            row.job.sink(("error", APIError(404, f"the adapter '{name}' was unloaded", param="model")))
    engine._drop_rows()
    remove_adapter(served, name)


# ---- running it ----

def quiet_server(config, on_exit):
    """uvicorn's server, stopping on SIGINT or SIGTERM with exit status 0 (uvicorn re-raises the signal after its
    shutdown, which would end the process with the signal's status instead). `on_exit()` runs first, so requests
    in flight are answered before uvicorn waits for their connections to close."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)


class RunningServer:
    """A uvicorn server on a bound socket, in this thread (`run`) or a background one (`start`)."""

    def __init__(self, config: ServerConfig, sock):
        import uvicorn

        self.state = ServerState(config, Metrics(config.served_model_name or Path(config.model.rstrip("/")).name))
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        settings = uvicorn.Config(create_app(self.state), log_level="warning", timeout_graceful_shutdown=5)
        self.server = quiet_server(settings, self._stop_engine)
        self.loader = threading.Thread(target=self._load, name="llmcycle-serve-loader", daemon=True)
        self.thread: threading.Thread | None = None
        self.on_ready = None

    def _load(self) -> None:
        load_state(self.state)
        if self.state.load_error is not None:
            self.server.should_exit = True
        elif self.on_ready is not None:
            self.on_ready()

    def run(self) -> None:
        self.loader.start()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> "RunningServer":
        self.thread = threading.Thread(target=self.run, name="llmcycle-serve-http", daemon=True)
        self.thread.start()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the model is loaded (raises the loading error) and uvicorn listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.load_error is not None:
                raise self.state.load_error
            if self.state.engine is not None and self.server.started:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the server did not become ready in {timeout} s")

    def _stop_engine(self) -> None:
        if self.state.engine is not None:
            self.state.engine.request_stop()

    def stop(self) -> None:
        self._stop_engine()
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.close()

    def close(self) -> None:
        self.loader.join(timeout=120)
        if self.state.engine is not None:
            self.state.engine.stop()
        self.sock.close()


def bind(host: str, port: int):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
