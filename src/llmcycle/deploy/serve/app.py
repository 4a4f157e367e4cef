"""The HTTP side of `llmcycle serve`: OpenAI's routes on FastAPI.

Handlers check the request and hand it to handling.py, which queues one job per prompt with the engine and
answers with JSON or server-sent events. A client that goes away cancels its jobs, which leave the batch at the
next step. The model loads in the background, so `/health` and every model route answer 503 until it is ready.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ... import __version__
from ...errors import UserError
from .bridge import ClientGone
from .chat import parse_chat
from .engine import Engine
from .guided import attach, parse_guide, template_has_tools
from .handling import (
    check_key,
    event_stream,
    lookup,
    read_body,
    respond,
    served_renderer,
    submit,
)
from .models import ServedModels
from .protocol import APIError, bad, parse_completion, parse_json
from .responses import chat_body, renamed, response_json, response_stream
from .state import ServerState
from .tokens import detokenize_body, tokenize_body

PLAYGROUND = Path(__file__).with_name("playground.html")


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
    add_token_routes(app, state)
    add_model_routes(app, state)
    add_responses_route(app, state)
    add_adapter_routes(app, state)
    return app


def add_open_routes(app: FastAPI, state: ServerState) -> None:
    """Routes without the API key: the playground, /health (and vLLM's /ping) and /metrics."""

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        html = PLAYGROUND.read_text() if PLAYGROUND.is_file() else "<p>llmcycle serve</p>"
        return HTMLResponse(html.replace("__NEEDS_KEY__", "true" if state.config.api_key else "false"))

    @app.get("/health")
    @app.api_route("/ping", methods=["GET", "POST"])  # vLLM's alias (SageMaker's health check)
    async def health():
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


def add_token_routes(app: FastAPI, state: ServerState) -> None:
    """vLLM's /tokenize and /detokenize (serve/tokens.py) and /version; as in vLLM, outside /v1 and the API key."""
    limit = state.config.max_request_bytes

    @app.post("/tokenize")
    async def tokenize(request: Request):
        data = parse_json(await read_body(request, limit))
        served, _ = state.ready()
        return tokenize_body(served, state.window, served_renderer(state, served), data)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        data = parse_json(await read_body(request, limit))
        served, _ = state.ready()
        return detokenize_body(served, data)

    @app.get("/version")
    async def version():
        return {"version": __version__}


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
        parsed = parse_completion(data, max_n=state.config.max_num_seqs)
        return await respond(state, request, attach(parsed, parse_guide(data, chat=False)))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request, state.config.api_key)
        data = parse_json(await read_body(request, limit))
        served, _ = state.ready()
        return await respond(state, request, parse_chat_request(state, served, data, state.config.max_num_seqs))


def parse_chat_request(state: ServerState, served: ServedModels, data: dict, max_n: int):
    """A chat completion request checked, rendered by the served chat template (with the tools it renders) and held
    to its structured output or tool call; /v1/chat/completions and /v1/responses share it."""
    guide = parse_guide(data, chat=True, tool_template=template_has_tools(served.loaded.tokenizer))
    parsed = parse_chat(data, served_renderer(state, served), max_n=max_n, tools=guide.tools_in_prompt if guide else None)
    return attach(parsed, guide)


def add_responses_route(app: FastAPI, state: ServerState) -> None:
    """OpenAI's Responses API, translated into the chat completion it means (serve/responses.py)."""
    limit = state.config.max_request_bytes

    @app.post("/v1/responses")
    async def responses(request: Request):
        check_key(request, state.config.api_key)
        data = parse_json(await read_body(request, limit))
        served, _ = state.ready()
        try:
            submitted = submit(state, parse_chat_request(state, served, chat_body(data), max_n=1))
        except APIError as error:
            raise renamed(error) from None
        if submitted.parsed.stream:
            return event_stream(response_stream(submitted, data))
        return JSONResponse(await response_json(request, submitted, data))


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
        _, engine, data = await body_of(request, ("lora_name", "lora_path"))
        try:
            await asyncio.wrap_future(engine.add_adapter(data["lora_name"], data["lora_path"]))
        except UserError as exc:
            raise bad("lora_path", str(exc)) from exc
        return PlainTextResponse(f"Success: LoRA adapter '{data['lora_name']}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(request: Request):
        served, engine, data = await body_of(request, ("lora_name",))
        name = data["lora_name"]
        if name not in served.names or name == served.base_name:
            raise APIError(404, f"no adapter named '{name}' is served", param="lora_name", code="model_not_found")
        await asyncio.wrap_future(engine.remove_adapter(name))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
