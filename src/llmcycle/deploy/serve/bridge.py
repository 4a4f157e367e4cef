"""From the engine thread to the event loop: each request's events arrive, in order, on an asyncio queue.

Events are handed over in batches: the loop wakes once for the events that arrived together (a decoding step's
tokens for every request), not once per token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from .engine import Engine
from .jobs import Event, Failed, Finished, Job, TextDelta
from .protocol import ParsedRequest


class ClientGone(Exception):
    """The client of a JSON answer went away; its jobs are cancelled and nothing is sent."""


class Mailbox:
    """Items posted from any thread, put on their asyncio queues by the event loop in one go."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
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
        self.remaining = count  # choices not finished yet
        self.completion_tokens = 0
        self.checked = time.monotonic()

    def sink(self, offset: int) -> Callable[[Event], None]:
        """The sink of the job whose first choice is the request's choice `offset`."""
        def put(event: Event) -> None:
            self.mailbox.post(self.queue, (offset, event))
        return put

    async def next(self, request: Request | None) -> tuple[int, TextDelta | Finished]:
        """(the request's choice index, event); a Failed event raises its error. Given the request (a JSON
        answer), checks every second that its client is still there; a streaming answer is cancelled by the
        server when its client goes."""
        while True:
            if request is not None and time.monotonic() - self.checked > 1.0:
                self.checked = time.monotonic()
                if await request.is_disconnected():
                    raise ClientGone()
            try:
                offset, event = await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                self.remaining -= 1
                self.completion_tokens += event.completion_tokens
            return offset + event.choice, event


@dataclass
class Submitted:
    """A request's jobs in the engine, and where their events arrive."""

    parsed: ParsedRequest
    jobs: list[Job]
    answer: Answer
    prompt_tokens: int
    engine: Engine

    def release(self) -> None:
        """Cancel the jobs unless every choice finished (the client went away, or a job failed)."""
        if self.answer.remaining > 0:
            self.engine.cancel(self.jobs)
