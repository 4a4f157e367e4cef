"""What the engine takes and gives back: a Job (one prompt of a request, with `n` choices) and the events it sends
each job's sink from the engine thread, as small typed records.

A job's events: any number of TextDelta per choice, then one Finished per choice; or a single Failed, after which
nothing more comes for that job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .models import Adapter
from .protocol import APIError, SamplingParams


@dataclass(frozen=True)
class TextDelta:
    """New text of one choice, ready to send (stop sequences already cut, see text.py)."""

    choice: int
    text: str
    logprobs: tuple = ()  # TokenLogprob entries (logprobs.py) of the tokens since the last delta, when asked for
    generated: int = 0  # the choice's completion tokens so far (streamed usage counts them)


@dataclass(frozen=True)
class Finished:
    """One choice is done: `reason` is "stop" (EOS or a stop sequence) or "length" (max_tokens)."""

    choice: int
    reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The whole job failed (timeout, its adapter unloaded, an engine error, shutdown): answered with `error`."""

    error: APIError


Event = TextDelta | Finished | Failed


@dataclass
class Job:
    """One prompt of a request, with `params.n` choices; `sink(event)` receives its events from the engine thread."""

    name: str  # the served name the request asked for
    adapter: Adapter | None
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    timeout: float | None = None
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    cancelled: bool = False  # its client went away: its rows leave at the next step, silently
    open_rows: int = 0
    completion_tokens: int = 0  # generated over its finished choices
    failed: bool = False
    echo: str | None = None  # the prompt's text sent back by `echo` (None: its ids decoded)
    streaming: bool = True  # False: its text is wanted only whole (offline runs), one TextDelta per choice at the end
    prompt_scores: object = None  # (prompt tokens - 1, vocab) log-probabilities, kept at prefill for echo + logprobs

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.arrival > self.timeout

    def fail(self, error: APIError) -> None:
        """Send `error` once, unless the job already failed or its client is gone."""
        if not (self.failed or self.cancelled):
            self.sink(Failed(error))
        self.failed = True

    @property
    def has_prefix(self) -> bool:
        """Whether the job's cache starts from a prefix-tuning adapter's key/value prefix."""
        return self.adapter is not None and self.adapter.prefix is not None
