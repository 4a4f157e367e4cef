"""Continuous batching on one thread: requests join the running batch between decoding steps and leave when done.

One engine thread owns the model. Each step it admits waiting requests (up to `max_num_seqs` rows: one row per
choice), prefills each one alone, then decodes one token for every running row in a single forward pass in which
each row runs through its own LoRA adapter (peft's `adapter_names`) or none; prompt-tuning rows had their virtual
tokens put before the prompt at prefill and then run through the base weights. Finished, cancelled and timed-out
rows leave at once. Next tokens come from the logits processors `generate()` builds from the model's generation
config (so temperature 0 gives `llmcycle generate`'s tokens) and, when sampling, from a torch.Generator per row
seeded from the request, so a seeded answer does not depend on what else is in the batch.

Encoder-decoder models whose decoder positions are absolute (BART, unlike T5's relative ones) take new requests
only into an empty batch, so every row of a batch sits at the same decoder position.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ...generate.engine import GenerationSettings
from ...models import cache_argument, unwrap_peft
from .batch import BatchState, merge, pad_sequences, select
from .models import BASE_ROW, Adapter, ServedModels
from .protocol import APIError, SamplingParams
from .text import TextTracker


class QueueFull(Exception):
    pass


def has_prefix(job) -> bool:
    return job.adapter is not None and job.adapter.prefix is not None


@dataclass
class Job:
    """One prompt of a request, with `n` choices; `sink(event)` receives its events from the engine thread.

    Events: ("text", choice, delta), ("finish", choice, finish_reason, completion_tokens), ("error", APIError).
    """

    name: str
    adapter: Adapter | None
    prompt_ids: list[int]
    params: SamplingParams
    sink: object
    timeout: float | None = None
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    cancelled: bool = False
    open_rows: int = 0
    failed: bool = False

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.arrival > self.timeout


@dataclass
class Row:
    """One choice of one job in the running batch."""

    job: Job
    choice: int
    history: list[int]  # the ids the logits processors see: prompt and output, or decoder ids
    length: int  # cache entries of this row, so the position of its next token
    tracker: TextTracker
    generator: torch.Generator | None
    processors: object
    generated: int = 0
    finished: str | None = None


class Engine:
    def __init__(self, served: ServedModels, metrics, *, max_num_seqs: int = 256, max_queued: int = 1024):
        self.served, self.metrics = served, metrics
        self.loaded = served.loaded
        self.device = served.loaded.device  # LoadedModel.device walks the parameters on every call
        self.max_num_seqs, self.max_queued = max_num_seqs, max_queued
        self.rows: list[Row] = []
        self.state: BatchState | None = None
        self.waiting: deque[Job] = deque()
        self.commands: deque = deque()
        self.starting: list[Job] = []  # jobs being prefilled
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="llmcycle-serve-engine", daemon=True)
        config = self.loaded.model.config
        self.joins_anytime = not self.loaded.is_encoder_decoder or hasattr(config, "relative_attention_num_buckets")
        self.cache_kwarg = cache_argument(self.loaded.model)
        self.row_adapters: list[str] | None = None  # per-row LoRA names of the forward in progress
        self.hooked: set[int] = set()
        self.hooks_current = False  # LoRA layers are looked for again after adapters are loaded
        self.greedy_plain: bool | None = None  # whether greedy decoding needs no logits processors
        eos = self.loaded.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    # ---- called from the server's threads ----

    def start(self) -> None:
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
            rows = len(self.rows) + self._rows_taken(list(self.waiting)) + self._rows_taken(jobs)
            if rows > self.max_num_seqs and len(self.waiting) + len(jobs) > self.max_queued:
                raise QueueFull()
            self.waiting.extend(jobs)
            self.metrics.set("vllm:num_requests_waiting", len(self.waiting))
            self.wake.notify_all()

    def call(self, function) -> Future:
        """Run `function()` on the engine thread between two steps (adapter loading)."""
        future: Future = Future()
        with self.wake:
            self.commands.append((function, future))
            self.wake.notify_all()
        return future

    # ---- the engine thread ----

    def _loop(self) -> None:
        while True:
            with self.wake:
                if self.stopping:
                    break
                if not (self.rows or self.waiting or self.commands):
                    self.wake.wait(timeout=0.5)
                    continue
            try:
                self._step()
            except Exception as exc:  # a bug must not take the server down: fail what runs, keep serving
                traceback.print_exc(file=sys.stderr)
                self._fail_all(APIError(500, f"internal error while generating: {type(exc).__name__}: {exc}"))
        self._fail_all(APIError(503, "the server is shutting down"), waiting=True)

    def _step(self) -> None:
        self._run_commands()
        self._drop_rows()
        self._admit()
        if self.rows:
            self._decode()
            self._drop_rows()

    def _run_commands(self) -> None:
        while self.commands:
            with self.wake:
                function, future = self.commands.popleft()
            try:
                future.set_result(function())
            except Exception as exc:  # handed to the caller
                future.set_exception(exc)
            self.hooks_current = False

    def _fail_all(self, error: APIError, waiting: bool = False) -> None:
        jobs = {id(job): job for job in [*(row.job for row in self.rows), *self.starting]}
        self.starting = []
        with self.wake:
            if waiting:
                jobs.update({id(job): job for job in self.waiting})
                self.waiting.clear()
        for job in jobs.values():
            if not job.failed:
                job.failed = True
                job.sink(("error", error))
        self.rows, self.state = [], None
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.set("vllm:num_requests_running", len({id(row.job) for row in self.rows}))
        self.metrics.set("vllm:num_requests_waiting", len(self.waiting))

    # ---- admission and prefill ----

    def _admit(self) -> None:
        may_join = self.joins_anytime or not self.rows
        admitted = []
        with self.wake:
            while may_join and self.waiting and len(self.rows) + self._rows_taken(admitted) + self.waiting[0].params.n <= self.max_num_seqs:
                admitted.append(self.waiting.popleft())
        now = time.monotonic()
        starting = []
        for job in admitted:
            if job.cancelled or job.expired(now):
                self._end_unstarted(job)
                continue
            self.metrics.add("llmcycle:requests_total", served_name=job.name)
            self.metrics.add("vllm:prompt_tokens_total", len(job.prompt_ids))
            starting.append(job)
        if starting:
            self.starting = starting  # failed with the running rows should the prefill raise
            state = self._start(starting)
            self.state = merge([self.state, state] if self.state is not None else [state])
            self.starting = []
        self._gauges()

    @staticmethod
    def _rows_taken(jobs: list[Job]) -> int:
        return sum(job.params.n for job in jobs)

    def _end_unstarted(self, job: Job) -> None:
        if not job.cancelled:
            job.failed = True
            job.sink(("error", APIError(408, f"the request waited longer than --request-timeout ({job.timeout:g} s)")))

    def _start(self, jobs: list[Job]) -> BatchState:
        """Prefill the jobs' prompts together, sample each choice's first token; the new rows join `self.rows`."""
        jobs = sorted(jobs, key=has_prefix)  # stable: prompts without a key/value prefix first
        logits, state, histories, lengths = self._prefill_all(jobs)
        index = [number for number, job in enumerate(jobs) for _ in range(job.params.n)]  # a row per choice
        rows = []
        for number, job in enumerate(jobs):
            processors = self._processors(job)
            job.open_rows = job.params.n
            for choice in range(job.params.n):
                generator = None
                if not job.params.greedy:
                    seed = job.params.seed if job.params.seed is not None else random.getrandbits(63)
                    generator = torch.Generator(device=logits.device).manual_seed((seed + choice) % (1 << 64))
                tracker = TextTracker(self.loaded.tokenizer, job.params.stop)
                rows.append(Row(job, choice, list(histories[number]), lengths[number], tracker, generator, processors))
        self.rows += rows
        self._take_tokens(rows, logits[index])
        return select(state, index)

    def _adapter_kwargs(self, adapters: list[Adapter | None]) -> dict:
        """Point the LoRA layers at these rows' adapters (peft's mixed-batch path, `adapter_names` per row).

        The names reach every LoRA layer through hooks installed once: peft's own `adapter_names=` argument walks
        every module to add and remove hooks on each call, and switching adapters on and off walks them too,
        each about as costly as a small model's decoding step. Returns extra forward arguments (none)."""
        self.row_adapters = None
        if not self.served.has_lora:
            return {}
        self._hook_lora_layers()
        self.row_adapters = [adapter.lora_name if adapter else BASE_ROW for adapter in adapters]
        return {}

    def _hook_lora_layers(self) -> None:
        from peft.tuners.lora import LoraLayer

        if self.hooks_current:
            return
        self.hooks_current = True
        for module in self.loaded.model.modules():
            if isinstance(module, LoraLayer) and id(module) not in self.hooked:
                module.register_forward_pre_hook(self._row_names_hook, with_kwargs=True)
                self.hooked.add(id(module))

    def _row_names_hook(self, module, args, kwargs):
        if self.row_adapters is not None:
            kwargs["adapter_names"] = self.row_adapters
        return args, kwargs

    def _prompt_inputs(self, jobs: list[Job]) -> tuple[dict, torch.Tensor]:
        """input_ids, or inputs_embeds with prompt adapters' virtual tokens first, padded into one batch (on the
        left for decoder-only models, so every row ends at its last token), and the attention mask."""
        device = self.device
        ids = [torch.tensor(job.prompt_ids, dtype=torch.long, device=device) for job in jobs]
        prompts = [job.adapter.prompt if job.adapter is not None else None for job in jobs]
        left = not self.loaded.is_encoder_decoder
        if all(prompt is None for prompt in prompts):
            padded, mask = pad_sequences(ids, left, self.loaded.tokenizer.pad_token_id or 0)
            return {"input_ids": padded}, mask
        embed = self.loaded.model.get_input_embeddings()
        embeds = [embed(tokens) for tokens in ids]  # (tokens, hidden) each
        embeds = [torch.cat([p.to(e.dtype), e]) if p is not None else e for p, e in zip(prompts, embeds)]
        padded, mask = pad_sequences(embeds, left, 0)
        return {"inputs_embeds": padded}, mask

    @torch.inference_mode()
    def _prefill(self, jobs: list[Job]) -> tuple[torch.Tensor, BatchState, list[list[int]], list[int]]:
        """One forward over the jobs' prompts: last-position logits (jobs, vocab), the state, histories, lengths."""
        from transformers import DynamicCache, EncoderDecoderCache

        inputs, mask = self._prompt_inputs(jobs)
        device = self.device
        kwargs = self._adapter_kwargs([job.adapter for job in jobs])
        if self.loaded.is_encoder_decoder:
            start = self._decoder_start()
            decoder_ids = torch.full((len(jobs), 1), start, dtype=torch.long, device=device)
            kwargs[self.cache_kwarg] = cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = self.loaded.model(**inputs, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=True, **kwargs)
            state = BatchState(cache, torch.ones_like(decoder_ids), out.encoder_last_hidden_state, mask)
            return out.logits[:, -1].float(), state, [[start]] * len(jobs), [1] * len(jobs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        kwargs[self.cache_kwarg] = cache = DynamicCache()
        out = self.loaded.model(**inputs, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        lengths = mask.sum(-1).tolist()
        return out.logits[:, -1].float(), BatchState(cache, mask), [list(job.prompt_ids) for job in jobs], lengths

    def _prefill_all(self, jobs: list[Job]) -> tuple[torch.Tensor, BatchState, list[list[int]], list[int]]:
        """Prompts without a prefix in one padded forward; each prefix-tuning prompt alone, as its cache starts
        from its adapter's prefix. `jobs` holds the prefixed ones last."""
        plain = [job for job in jobs if not has_prefix(job)]
        parts = ([self._prefill(plain)] if plain else []) + [self._prefill_prefixed(job) for job in jobs[len(plain):]]
        if len(parts) == 1:
            return parts[0]
        logits = torch.cat([part[0] for part in parts])
        state = merge([part[1] for part in parts])
        return logits, state, [h for part in parts for h in part[2]], [n for part in parts for n in part[3]]

    @torch.inference_mode()
    def _prefill_prefixed(self, job: Job) -> tuple[torch.Tensor, BatchState, list[list[int]], list[int]]:
        """A prefix-tuning prompt: the cache starts as the adapter's per-layer key/value prefix, and positions count
        the virtual tokens (as peft's forward has them)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(job.adapter.prefix):
            cache.update(keys.clone(), values.clone(), layer)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        virtual = job.adapter.virtual_tokens
        length = virtual + ids.shape[1]
        mask = torch.ones(1, length, dtype=torch.long, device=self.device)
        positions = torch.arange(virtual, length, device=self.device).unsqueeze(0)
        kwargs = self._adapter_kwargs([job.adapter])
        kwargs[self.cache_kwarg] = cache
        out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1].float(), BatchState(cache, mask), [list(job.prompt_ids)], [length]

    def _decoder_start(self) -> int:
        model = self.loaded.model
        start = getattr(model.generation_config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(model.config, "decoder_start_token_id", None)
        return start if start is not None else self.loaded.tokenizer.pad_token_id

    def _processors(self, job: Job):
        """The logits processors and warpers `generate()` would use for these settings and this model.

        Under greedy decoding most models have none; that answer is kept, since building the list costs a copy of
        the generation config per request."""
        if job.params.greedy and self.greedy_plain:
            return []
        processors = self._build_processors(job)
        if job.params.greedy and self.greedy_plain is None:
            self.greedy_plain = len(processors) == 0
        return processors

    def _build_processors(self, job: Job):
        params = job.params
        settings = GenerationSettings(max_new_tokens=params.max_tokens or 1, do_sample=not params.greedy,
                                      temperature=params.temperature or 1.0, top_k=params.top_k, top_p=params.top_p)
        config = settings.to_transformers(self.loaded)
        prompt_length = 1 if self.loaded.is_encoder_decoder else len(job.prompt_ids)
        config.max_length = prompt_length + config.max_new_tokens
        model = unwrap_peft(self.loaded.model)
        encoder_ids = torch.tensor([job.prompt_ids]) if self.loaded.is_encoder_decoder else None
        return model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_length,
                                           encoder_input_ids=encoder_ids, device=str(self.device))

    # ---- decoding ----

    @torch.inference_mode()
    def _decode(self) -> None:
        device = self.device
        state = self.state
        ids = torch.tensor([[row.history[-1]] for row in self.rows], dtype=torch.long, device=device)
        mask = torch.cat([state.mask, torch.ones(state.size, 1, dtype=state.mask.dtype, device=device)], dim=1)
        kwargs = self._adapter_kwargs([row.job.adapter for row in self.rows])
        kwargs[self.cache_kwarg] = state.cache
        if self.loaded.is_encoder_decoder:
            from transformers.modeling_outputs import BaseModelOutput

            out = self.loaded.model(encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder),
                                    attention_mask=state.encoder_mask, decoder_input_ids=ids, decoder_attention_mask=mask,
                                    use_cache=True, **kwargs)
        else:
            positions = torch.tensor([[row.length] for row in self.rows], dtype=torch.long, device=device)
            out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        state.mask = mask
        for row in self.rows:
            row.length += 1
        self._take_tokens(self.rows, out.logits[:, -1].float())

    def _next_tokens(self, rows: list[Row], logits: torch.Tensor) -> list[int]:
        """One token per row from its (rows, vocab) logits."""
        if all(row.generator is None and not row.processors for row in rows):
            return logits.argmax(dim=-1).tolist()
        tokens = []
        for row, scores in zip(rows, logits):
            history = torch.tensor([row.history], dtype=torch.long, device=scores.device)
            scores = row.processors(history, scores.unsqueeze(0)) if row.processors else scores.unsqueeze(0)
            if row.generator is None:
                tokens.append(int(scores.argmax(dim=-1)))
            else:
                probs = torch.softmax(scores, dim=-1)
                tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return tokens

    def _take_tokens(self, rows: list[Row], logits: torch.Tensor) -> None:
        now = time.monotonic()
        for row, token in zip(rows, self._next_tokens(rows, logits)):
            job = row.job
            if job.first_token is None:
                job.first_token = now
                self.metrics.observe("vllm:time_to_first_token_seconds", now - job.arrival)
            row.history.append(token)
            row.generated += 1
            self.metrics.add("vllm:generation_tokens_total")
            self._emit(row, token)

    def _emit(self, row: Row, token: int) -> None:
        """Send the row's new text; finish it on EOS, a stop sequence or max_tokens."""
        eos = token in self.eos and not row.job.params.ignore_eos
        at_limit = row.job.params.max_tokens is not None and row.generated >= row.job.params.max_tokens
        delta, stopped = row.tracker.push(None if eos else token, final=eos or at_limit)
        if delta and not row.job.cancelled:
            row.job.sink(("text", row.choice, delta))
        if eos or stopped:
            self._finish(row, "stop")
        elif at_limit:
            self._finish(row, "length")

    def _finish(self, row: Row, reason: str) -> None:
        row.finished = reason
        job = row.job
        if not job.cancelled:
            job.sink(("finish", row.choice, reason, row.generated))
        job.open_rows -= 1
        if job.open_rows == 0:
            self.metrics.add("vllm:request_success_total", finished_reason=reason)
            self.metrics.observe("vllm:e2e_request_latency_seconds", time.monotonic() - job.arrival)

    def _drop_rows(self) -> None:
        """Rows finished, cancelled (client gone) or past their timeout leave the batch."""
        now = time.monotonic()
        for row in self.rows:
            job = row.job
            if row.finished is None and (job.cancelled or job.failed or job.expired(now)):
                row.finished = "abort"
                if not (job.cancelled or job.failed):
                    job.failed = True
                    job.sink(("error", APIError(408, f"the request took longer than --request-timeout ({job.timeout:g} s)")))
        keep = [index for index, row in enumerate(self.rows) if row.finished is None]
        if len(keep) < len(self.rows):
            self.state = select(self.state, keep) if keep else None
            self.rows = [self.rows[index] for index in keep]
        self._gauges()
