"""Listening on HTTP: a bound socket and uvicorn's server stopping cleanly on a signal.

Shared by `llmcycle serve` and `llmcycle label`; a leaf with no model code, so the ranking page starts without
importing the serving engine.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading

import uvicorn

from ...errors import UserError


class QuietServer(uvicorn.Server):
    """uvicorn's server, stopping on SIGINT or SIGTERM with exit status 0 (uvicorn re-raises the signal after its
    shutdown, which would end the process with the signal's status instead). `on_exit()` runs first, so requests
    in flight are answered before uvicorn waits for their connections to close."""

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self.on_exit = on_exit

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
        self.on_exit()
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with IPPROTO_TCP named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    on connections whose socket says so, and with it on, a small write waits for the client's delayed ACK, about
    40 ms on Linux: every answer on a kept-alive connection, and every streamed chunk after the first, paid that."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
