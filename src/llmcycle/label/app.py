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
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from .queue import BadSubmission, Labeler, Queues

PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 64 * 1024
"""A ranking is a few hundred bytes; anything far larger is refused before it is parsed."""


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, **({"field": field} if field else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def page_response() -> HTMLResponse:
    """The page, with a policy that runs only its own inline script (by hash) and loads nothing from elsewhere."""
    html = PAGE.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
              "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": policy, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def create_app(queues: Queues) -> FastAPI:
    app = FastAPI(title="llmcycle label", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)

    def labeler_of(request: Request) -> Labeler | JSONResponse:
        labeler = queues.authenticate(request.headers.get("authorization"))
        if labeler is None:
            return error(401, "missing or unknown token: send 'Authorization: Bearer TOKEN'", headers={"WWW-Authenticate": "Bearer"})
        return labeler

    @app.get("/")
    async def page():
        return page_response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/next")
    async def next_item(request: Request):
        labeler = labeler_of(request)
        if isinstance(labeler, JSONResponse):
            return labeler
        item = queues.next_item(labeler)
        return JSONResponse(item, headers={"Cache-Control": "no-store"}) if item else Response(status_code=204)

    @app.get("/api/progress")
    async def progress(request: Request):
        labeler = labeler_of(request)
        return labeler if isinstance(labeler, JSONResponse) else {**queues.progress(labeler), "labeler": labeler.name}

    @app.post("/api/rank")
    async def rank(request: Request):
        labeler = labeler_of(request)
        if isinstance(labeler, JSONResponse):
            return labeler
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            row, new = await run_in_threadpool(queues.submit, labeler, body)  # the append waits for fsync
        except BadSubmission as exc:
            return error(400, str(exc), exc.field)
        return {"ok": True, "item": row["item"], "duplicate": not new, **queues.progress(labeler)}

    return app


async def read_json(request: Request) -> object:
    """The request's JSON body, or the 400/413 answer saying what is wrong with it."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return error(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"body: not valid JSON ({exc})", "body")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # A bug, or a full disk: the request fails (its row is not acknowledged), the server keeps serving.
        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"internal error: {type(exc).__name__}; the row was not saved, submit again")


# ---------------------------------------------------------------- the server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (SO_REUSEADDR, so a restart after a kill binds the same port at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host") from exc
    sock.listen(128)
    return sock


class LabelServer:
    """uvicorn serving the page on a bound socket, in this thread (`run`, stopped by Ctrl-C) or another (`start`)."""

    def __init__(self, queues: Queues, sock: socket.socket):
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        config = uvicorn.Config(create_app(queues), log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except KeyboardInterrupt:
            pass  # uvicorn raises Ctrl-C again after its clean shutdown; stopping is what it asked for
        finally:
            self.sock.close()

    def start(self, timeout: float = 30) -> "LabelServer":
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
