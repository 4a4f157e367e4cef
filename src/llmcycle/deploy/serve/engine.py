"""Continuous batching: requests join the running batch between decoding steps and leave when done.

The engine schedules; the model runner (runner.py) runs the forward passes and holds the batch's cache; the
sampler (sampler.py) picks each row's next token. Each step admits waiting jobs (up to `max_num_seqs` rows: one
row per choice), prefills them together, then decodes one token for every running row in a single forward pass.
Finished, cancelled and timed-out rows leave at once. Every job's text and finish reach its sink as typed events
(jobs.py).

Everything the HTTP layer needs is a public method: `submit`, `cancel`, `add_adapter`, `remove_adapter`, `stats`,
`start` and `stop`. In a server one engine thread owns the model and calls `step` in a loop (`start`); offline,
a caller may instead call `step` itself until `has_work()` is false.

Encoder-decoder models whose decoder positions are absolute (BART, unlike T5's relative ones) take new requests
only into an empty batch, so every row of a batch sits at the same decoder position.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .jobs import Finished, Job, TextDelta
from .logprobs import as_in_text, entry, prompt_entries, raw_logprobs
from .metrics import Metrics
from .models import Adapter, ServedModels, add_adapter, remove_adapter
from .protocol import APIError
from .runner import ModelRunner
from .sampler import RowSampling, Sampler
from .text import TextTracker


class QueueFull(Exception):
    """The jobs would wait behind a full queue (the server answers 429)."""


@dataclass
class Row:
    """One choice of one job in the running batch."""

    job: Job
    choice: int
    history: list[int]  # the ids the logits processors see: prompt and output, or decoder ids
    length: int  # cache entries of this row, so the position of its next token
    tracker: TextTracker
    sampling: RowSampling
    generated: int = 0
    finished: str | None = None
    pending: list = field(default_factory=list)  # log-probability entries not yet sent with a delta
    last_token: float = 0.0  # when its last token came (time.monotonic()), for the inter-token latency


@dataclass(frozen=True)
class EngineStats:
    """What the engine holds now."""

    running_requests: int  # jobs with rows in the batch
    waiting_requests: int  # jobs queued for the batch
    running_rows: int  # rows in the batch (one per choice)


class Engine:
    """Continuous batching over one served model (its base and adapters)."""

    def __init__(self, served: ServedModels, metrics: Metrics | None = None, *, max_num_seqs: int,
                 max_queued: int | None = None):
        """`max_num_seqs` rows run together; past that, at most `max_queued` jobs wait (None: no limit)."""
        self.served = served
        self.metrics = metrics if metrics is not None else Metrics(served.base_name)
        self.max_num_seqs, self.max_queued = max_num_seqs, max_queued
        self.runner = ModelRunner(served)
        self.sampler = Sampler(served.loaded)
        self.rows: list[Row] = []
        self.waiting: deque[Job] = deque()
        self.commands: deque[tuple] = deque()
        self.starting: list[Job] = []  # jobs being prefilled
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="llmcycle-serve-engine", daemon=True)
        eos = served.loaded.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    # ---- the public API: safe to call from any thread ----

    def start(self) -> None:
        """Run the engine on its own thread."""
        self.thread.start()

    def request_stop(self) -> None:
        """Stop after the current step; running and waiting requests are answered 503."""
        with self.wake:
            self.stopping = True
            self.wake.notify_all()

    def stop(self) -> None:
        self.request_stop()
        self.thread.join(timeout=30)

    def submit(self, jobs: list[Job]) -> None:
        """Queue the jobs of one request together, or raise QueueFull when they would wait behind a full queue
        (jobs that fit the running batch at once never count as queued)."""
        with self.wake:
            rows = len(self.rows) + rows_taken(self.waiting) + rows_taken(jobs)
            queued = len(self.waiting) + len(jobs)
            if rows > self.max_num_seqs and self.max_queued is not None and queued > self.max_queued:
                raise QueueFull()
            self.waiting.extend(jobs)
            self.metrics.set("vllm:num_requests_waiting", len(self.waiting))
            self.wake.notify_all()

    def cancel(self, jobs: list[Job]) -> None:
        """Their client went away: the jobs leave at the next step and send nothing more."""
        with self.wake:
            for job in jobs:
                job.cancelled = True
            self.wake.notify_all()

    def add_adapter(self, name: str, path: str) -> Future[Adapter]:
        """Load the adapter at `path` under `name` between two steps; the future raises UserError if it cannot."""
        return self._call(lambda: add_adapter(self.served, name, path))

    def remove_adapter(self, name: str) -> Future[None]:
        """Remove the adapter `name` between two steps; requests using it fail first with 404 (their rows cannot
        run without it)."""
        return self._call(lambda: self._unload(name))

    def stats(self) -> EngineStats:
        rows = self.rows
        return EngineStats(len({id(row.job) for row in rows}), len(self.waiting), len(rows))

    def has_work(self) -> bool:
        return bool(self.rows or self.waiting or self.commands)

    def step(self) -> None:
        """One step on the caller's thread: run queued calls, let finished rows leave, admit waiting jobs, decode
        one token for every running row. Not to be called while the engine's own thread runs."""
        self._run_commands()
        self._drop_rows()
        self._admit()
        self._drop_rows()  # rows done at their first token (EOS, max_tokens 1) must not decode again
        if self.rows:
            self._decode()
            self._drop_rows()

    # ---- the engine thread ----

    def _call(self, function) -> Future:
        """Run `function()` on the engine thread between two steps."""
        future: Future = Future()
        with self.wake:
            self.commands.append((function, future))
            self.wake.notify_all()
        return future

    def _loop(self) -> None:
        while True:
            with self.wake:
                if self.stopping:
                    break
                if not self.has_work():
                    self.wake.wait(timeout=0.5)
                    continue
            try:
                self.step()
            except Exception as exc:  # a bug must not take the server down: fail what runs, keep serving
                traceback.print_exc(file=sys.stderr)
                self._fail_all(APIError(500, f"internal error while generating: {type(exc).__name__}: {exc}"))
        self._fail_all(APIError(503, "the server is shutting down"), waiting=True)

    def _run_commands(self) -> None:
        while self.commands:
            with self.wake:
                function, future = self.commands.popleft()
            try:
                future.set_result(function())
            except Exception as exc:  # handed to the caller
                future.set_exception(exc)
            self.runner.adapters_changed()

    def _unload(self, name: str) -> None:
        error = APIError(404, f"the adapter '{name}' was unloaded", param="model")
        for row in self.rows:
            if row.job.name == name:
                row.job.fail(error)
        self._drop_rows()
        remove_adapter(self.served, name)

    def _fail_all(self, error: APIError, waiting: bool = False) -> None:
        jobs = {id(job): job for job in [*(row.job for row in self.rows), *self.starting]}
        self.starting = []
        with self.wake:
            if waiting:
                jobs.update({id(job): job for job in self.waiting})
                self.waiting.clear()
        for job in jobs.values():
            job.fail(error)
        self.rows = []
        self.runner.clear()
        self._gauges()

    def _gauges(self) -> None:
        stats = self.stats()
        self.metrics.set("vllm:num_requests_running", stats.running_requests)
        self.metrics.set("vllm:num_requests_waiting", stats.waiting_requests)

    # ---- admission and prefill ----

    def _admit(self) -> None:
        starting = [job for job in self._pop_admitted() if self._still_wanted(job)]
        if starting:
            self.starting = starting  # failed with the running rows should the prefill raise
            self._start(starting)
            self.starting = []
        self._gauges()

    def _pop_admitted(self) -> list[Job]:
        """The waiting jobs, oldest first, whose rows fit the batch now."""
        admitted: list[Job] = []
        if self.rows and not self.runner.joins_anytime:
            return admitted
        with self.wake:
            while self.waiting and len(self.rows) + rows_taken(admitted) + self.waiting[0].params.n <= self.max_num_seqs:
                admitted.append(self.waiting.popleft())
        return admitted

    def _still_wanted(self, job: Job) -> bool:
        """False for a job cancelled or timed out while it waited (answered 408 unless its client went away)."""
        if job.cancelled or job.expired(time.monotonic()):
            if not job.cancelled:
                job.fail(APIError(408, f"the request waited longer than --request-timeout ({job.timeout:g} s)"))
            return False
        self.metrics.add("llmcycle:requests_total", served_name=job.name)
        self.metrics.add("vllm:prompt_tokens_total", len(job.prompt_ids))
        self.metrics.observe("vllm:request_queue_time_seconds", time.monotonic() - job.arrival)
        return True

    def _start(self, jobs: list[Job]) -> None:
        """Prefill the jobs' prompts together and sample each choice's first token; the new rows join the batch."""
        jobs = sorted(jobs, key=lambda job: job.has_prefix)  # stable: prompts without a key/value prefix first
        index = [number for number, job in enumerate(jobs) for _ in range(job.params.n)]  # a row per choice
        logits, histories, lengths = self.runner.prefill(jobs, index)
        rows = []
        for number, job in enumerate(jobs):
            job.open_rows = job.params.n
            for choice, sampling in enumerate(self.sampler.for_job(job, logits.device)):
                tracker = TextTracker(self.served.loaded.tokenizer, job.params.stop, streaming=job.streaming,
                                      keep_whitespace=job.params.echo or job.params.keep_whitespace)
                rows.append(Row(job, choice, list(histories[number]), lengths[number], tracker, sampling))
        self.rows += rows
        self._echo(rows)
        self._take_tokens(rows, logits)

    def _echo(self, rows: list[Row]) -> None:
        """Send the prompt first to rows whose job echoes it, with its log-probabilities when asked for."""
        tokenizer = self.served.loaded.tokenizer
        entries: dict[int, tuple] = {}
        for row in rows:
            job = row.job
            if not job.params.echo or job.cancelled:
                continue
            if id(job) not in entries:
                scores = job.prompt_scores
                entries[id(job)] = () if scores is None else tuple(
                    prompt_entries(tokenizer, scores, job.prompt_ids, job.params.logprobs))
                job.prompt_scores = None  # (prompt, vocab) floats: not kept past the answer's first event
            text = job.echo if job.echo is not None else tokenizer.decode(job.prompt_ids)
            job.sink(TextDelta(row.choice, text, as_in_text(entries[id(job)], text)))

    # ---- decoding ----

    def _decode(self) -> None:
        rows = self.rows
        logits = self.runner.decode([row.history[-1] for row in rows], [row.length for row in rows],
                                    [row.job.adapter for row in rows])
        for row in rows:
            row.length += 1
        self._take_tokens(rows, logits)

    def _take_tokens(self, rows: list[Row], logits: torch.Tensor) -> None:
        now = time.monotonic()
        wanted = [index for index, row in enumerate(rows) if row.job.params.logprobs is not None]
        logprobs = dict(zip(wanted, raw_logprobs(logits[wanted]))) if wanted else {}  # before processors change logits
        gaps, made = [], 0  # inter-token latencies and tokens of this step, recorded together
        for index, (row, token) in enumerate(zip(rows, self.sampler.next_tokens(rows, logits))):
            job = row.job
            if job.params.max_tokens == 0:  # echo alone: the prompt is scored, nothing generated
                self._finish(row, "length")
                continue
            if index in logprobs:
                row.pending.append(entry(self.served.loaded.tokenizer, logprobs[index], row.history, token, job.params.logprobs))
            if job.first_token is None:
                job.first_token = now
                self.metrics.observe("vllm:time_to_first_token_seconds", now - job.arrival)
            if row.generated:
                gaps.append(now - row.last_token)
            row.history.append(token)
            row.generated += 1
            row.last_token = now
            made += 1
            self._emit(row, token)
        self.metrics.add("vllm:generation_tokens_total", made)
        if gaps:
            self.metrics.observe_many("vllm:inter_token_latency_seconds", gaps)

    def _emit(self, row: Row, token: int) -> None:
        """Send the row's new text; finish it on EOS, a stop sequence or max_tokens."""
        params = row.job.params
        eos = token in self.eos and not params.ignore_eos
        matched = row.sampling.matcher is not None and row.sampling.matcher.finished  # the grammar allows no more
        at_limit = params.max_tokens is not None and row.generated >= params.max_tokens
        stripping = not row.tracker.sent and not row.tracker.keep_whitespace  # the text's start is stripped
        delta, stopped = row.tracker.push(None if eos else token, final=eos or at_limit or matched,
                                          stops=row.generated >= params.min_tokens)
        finishing = eos or stopped or at_limit or matched
        if (delta or (finishing and row.pending)) and not row.job.cancelled:
            entries = as_in_text(tuple(row.pending), delta) if stripping else tuple(row.pending)
            row.job.sink(TextDelta(row.choice, delta, entries, row.generated))
            row.pending.clear()
        if eos or stopped or matched:
            self._finish(row, "stop")
        elif at_limit:
            self._finish(row, "length")

    def _finish(self, row: Row, reason: str) -> None:
        row.finished = reason
        job = row.job
        if not job.cancelled:
            job.sink(Finished(row.choice, reason, row.generated))
        job.open_rows -= 1
        job.completion_tokens += row.generated
        if job.open_rows == 0:
            self.metrics.add("vllm:request_success_total", finished_reason=reason)
            self.metrics.observe("vllm:e2e_request_latency_seconds", time.monotonic() - job.arrival)
            self.metrics.observe("vllm:request_prompt_tokens", len(job.prompt_ids))
            self.metrics.observe("vllm:request_generation_tokens", job.completion_tokens)

    def _drop_rows(self) -> None:
        """Rows finished, cancelled (client gone), failed or past their timeout leave the batch."""
        now = time.monotonic()
        for row in self.rows:
            job = row.job
            if row.finished is None and (job.cancelled or job.failed or job.expired(now)):
                row.finished = "abort"
                if not (job.cancelled or job.failed):
                    job.fail(APIError(408, f"the request took longer than --request-timeout ({job.timeout:g} s)"))
        keep = [index for index, row in enumerate(self.rows) if row.finished is None]
        if len(keep) < len(self.rows):
            self.runner.keep(keep)
            self.rows = [self.rows[index] for index in keep]
        self._gauges()


def rows_taken(jobs) -> int:
    """Rows the jobs need in the batch: one per choice."""
    return sum(job.params.n for job in jobs)
