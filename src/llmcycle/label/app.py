"""The labeling page and its API on FastAPI, served by uvicorn on a bound socket, as `llmcycle serve` is.

    GET  /               the page (page.html: no external resources, a Content-Security-Policy that allows only
                         its own script, every untrusted text shown with textContent)
    GET  /api/next       {"item", "prompt", "responses"} of the labeler's next item; 204 when their queue is done
    POST /api/rank       {"item", "ranking", "flags"?}: 200 once the row is on disk (a repeat answers the row
                         already written, with "duplicate": true); 400 naming the field for a bad body
    GET  /api/progress   {"done", "left", "total"}
    GET  /health         {"status": "ok"}

With labelers, every /api call carries `Authorization: Bearer TOKEN` (401 without a known one). A handler that
fails answers 500 and the server carries on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..deploy.serve.listening import QuietServer
from .queue import BadSubmission, Labeler, Queues

PAGE = Path(__file__).with_name("page.html")
STOP_GRACE_S = 1.0
"""With a stop condition (every queue ranked), how long the server stays up after it holds."""
MAX_BODY_BYTES = 64 * 1024
"""A ranking is a few hundred bytes; anything far larger is refused before it is parsed."""


class APIError(Exception):
    """A request that cannot be served, answered as {"error": {"message", "field"?}} with its status."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), **({"field": self.field} if self.field else {})}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def page_response() -> HTMLResponse:
    """The page, with a policy that runs only its own inline script (by hash) and loads nothing from elsewhere."""
    html = PAGE.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
              "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": policy, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def create_app(queues: Queues) -> FastAPI:
    app = FastAPI(title="llmcycle label", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)

    @app.get("/")
    async def page():
        return page_response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    add_api_routes(app, queues)
    return app


def add_api_routes(app: FastAPI, queues: Queues) -> None:
    def labeler_of(request: Request) -> Labeler:
        labeler = queues.authenticate(request.headers.get("authorization"))
        if labeler is None:
            raise APIError(401, "missing or unknown token: send 'Authorization: Bearer TOKEN'", headers={"WWW-Authenticate": "Bearer"})
        return labeler

    @app.get("/api/next")
    async def next_item(request: Request):
        item = queues.next_item(labeler_of(request))
        return JSONResponse(item, headers={"Cache-Control": "no-store"}) if item else Response(status_code=204)

    @app.get("/api/progress")
    async def progress(request: Request):
        labeler = labeler_of(request)
        return {**queues.progress(labeler), "labeler": labeler.name}

    @app.post("/api/rank")
    async def rank(request: Request):
        labeler = labeler_of(request)
        body = await read_json(request)
        try:
            row, new = await run_in_threadpool(queues.submit, labeler, body)  # the append waits for fsync
        except BadSubmission as exc:
            raise APIError(400, str(exc), exc.field) from exc
        return {"ok": True, "item": row["item"], "duplicate": not new, **queues.progress(labeler)}


async def read_json(request: Request) -> object:
    """The request's JSON body; APIError 413 when it is too large, 400 when it is not JSON."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise APIError(400, f"body: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})", "body") from exc


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # A bug, or a full disk: the request fails (its row is not acknowledged), the server keeps serving.
        traceback.print_exception(exc, file=sys.stderr)
        return APIError(500, f"internal error: {type(exc).__name__}; the row was not saved, submit again").response()


# ---------------------------------------------------------------- the server


class LabelServer:
    """uvicorn serving the page on a bound socket (`bind`, as `llmcycle serve` binds), in this thread (`run`, which
    returns on Ctrl-C or SIGTERM) or another (`start`)."""

    def __init__(self, queues: Queues, sock: socket.socket, stop_when: Callable[[], bool] | None = None):
        self.sock, self.stop_when = sock, stop_when
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        config = uvicorn.Config(create_app(queues), log_level="warning", timeout_graceful_shutdown=5)
        self.server = QuietServer(config, on_exit=lambda: None)  # nothing to drain: every row is on disk when answered
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        if self.stop_when is not None:
            threading.Thread(target=self._stop_when_done, name="llmcycle-label-watch", daemon=True).start()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def _stop_when_done(self) -> None:
        while not self.server.should_exit:
            if self.stop_when():
                time.sleep(STOP_GRACE_S)  # the last answer reaches the page before the server goes
                self.server.should_exit = True
            time.sleep(0.2)

    def start(self, timeout: float = 30) -> LabelServer:
        self.thread = threading.Thread(target=self.run, name="llmcycle-label-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("the labeling server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
