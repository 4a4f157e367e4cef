"""The server process: a bound socket, uvicorn serving the app on it, the model loading beside it, and a clean
stop on SIGINT or SIGTERM (requests in flight answered, exit status 0)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import create_app
from .config import ServerConfig
from .listening import QuietServer
from .metrics import Metrics
from .state import ServerState, load_state


class RunningServer:
    """A uvicorn server on a bound socket, in this thread (`run`) or a background one (`start`)."""

    def __init__(self, config: ServerConfig, sock: socket.socket):
        self.state = ServerState(config, Metrics(config.base_name))
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        settings = uvicorn.Config(create_app(self.state), log_level="warning", timeout_graceful_shutdown=5)
        self.server = QuietServer(settings, self._stop_engine)
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

    def start(self) -> RunningServer:
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
