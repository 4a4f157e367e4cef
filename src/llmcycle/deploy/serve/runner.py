"""The model's forward passes over the running batch: prefill new prompts, then decode one token for every row.

The runner holds the batch's KV cache and masks (batch.py's BatchState), row for row in the engine's order; the
engine decides which rows join and leave. Each row runs through its own LoRA adapter (peft's `adapter_names`) or
none; prompt-tuning rows have their virtual tokens put before the prompt at prefill and then run through the base
weights; prefix-tuning rows start from their adapter's key/value prefix.
"""

from __future__ import annotations

import torch

from ...models import cache_argument, unwrap_peft
from .batch import BatchState, GrowingCache, merge, pad_sequences, select
from .fused import fuse_activations
from .jobs import Job
from .logprobs import raw_logprobs
from .models import BASE_ROW, Adapter, ServedModels

PREFILL_TOKENS = 2048
"""Padded prompt positions in one prefill forward (as vLLM bounds a step's batched tokens). On the eval bench, 2,048
was 5 to 10% faster than one prefill of every admitted row, and 512 to 4,096 were never slower (bench/RESULTS.md);
our reading, not tested apart, is that smaller groups keep each layer's activations in the CPU's caches."""
Prefilled = tuple[torch.Tensor, BatchState, list[list[int]], list[int]]  # logits (jobs, vocab), state, histories, lengths


class ModelRunner:
    """Forward passes of one served model, with the running batch's state."""

    def __init__(self, served: ServedModels):
        self.served, self.loaded = served, served.loaded
        self.device = served.loaded.device  # LoadedModel.device walks the parameters on every call
        self.cache_kwarg = cache_argument(self.loaded.model)
        config = self.loaded.model.config
        # decoders with absolute positions (BART) keep every row at one position: new rows wait for an empty batch
        self.joins_anytime = not self.loaded.is_encoder_decoder or hasattr(config, "relative_attention_num_buckets")
        self.state: BatchState | None = None
        self.row_adapters: list[str] | None = None  # per-row LoRA names of the forward in progress
        self.hooked: dict[int, object] = {}  # id(LoRA layer) -> its hook's handle
        self.hooks_current = False  # LoRA layers are looked for again after adapters change
        self.keeps_logits: bool | None = None  # whether the model's forward takes logits_to_keep
        self.unfuse = fuse_activations(self.loaded.model)  # one-kernel GELU while this runner runs (fused.py)

    # ---- the batch ----

    def prefill(self, jobs: list[Job], index: list[int]) -> tuple[torch.Tensor, list[list[int]], list[int]]:
        """Prefill `jobs` (those with a key/value prefix last) and add rows to the batch, row i from job index[i].

        Returns the new rows' next-token logits (rows, vocab), and each job's history (the ids the logits
        processors see) and cache length."""
        logits, state, histories, lengths = self._prefill_all(jobs)
        rows = state if index == list(range(state.size)) else select(state, index)  # a row per job: no copy
        self.state = merge([self.state, rows] if self.state is not None else [rows])
        return logits[index], histories, lengths

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int], adapters: list[Adapter | None]) -> torch.Tensor:
        """One forward for every row: its last token at its position, through its adapter; logits (rows, vocab)."""
        device, state = self.device, self.state
        ids = torch.tensor([[token] for token in tokens], dtype=torch.long, device=device)
        mask = torch.cat([state.mask, torch.ones(state.size, 1, dtype=state.mask.dtype, device=device)], dim=1)
        kwargs = self._adapter_kwargs(adapters)
        kwargs[self.cache_kwarg] = state.cache
        if self.loaded.is_encoder_decoder:
            from transformers.modeling_outputs import BaseModelOutput

            out = self.loaded.model(encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder),
                                    attention_mask=state.encoder_mask, decoder_input_ids=ids, decoder_attention_mask=mask,
                                    use_cache=True, **kwargs)
        else:
            position_ids = torch.tensor([[position] for position in positions], dtype=torch.long, device=device)
            out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **kwargs)
        state.mask = mask
        return out.logits[:, -1].float()

    def keep(self, rows: list[int]) -> None:
        """Only these rows stay in the batch."""
        self.state = select(self.state, rows) if rows else None

    def clear(self) -> None:
        self.state = None

    def close(self) -> None:
        """Drop the batch, take the hooks off the LoRA layers and put the model's own activations back: the model
        runs as before this runner (an offline run hands the model back to its verb, which may train it next)."""
        self.state, self.row_adapters = None, None
        self.unfuse()
        for handle in self.hooked.values():
            handle.remove()
        self.hooked.clear()
        self.hooks_current = False

    def adapters_changed(self) -> None:
        """Adapters were loaded or removed: look for LoRA layers to hook again before the next forward."""
        self.hooks_current = False

    # ---- per-row adapters ----

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
                self.hooked[id(module)] = module.register_forward_pre_hook(self._row_names_hook, with_kwargs=True)

    def _row_names_hook(self, module, args, kwargs):
        if self.row_adapters is not None:
            kwargs["adapter_names"] = self.row_adapters
        return args, kwargs

    # ---- prefill ----

    def _prompt_inputs(self, jobs: list[Job]) -> tuple[dict, torch.Tensor]:
        """input_ids, or inputs_embeds with prompt adapters' virtual tokens first, padded into one batch (on the
        left for decoder-only models, so every row ends at its last token), and the attention mask."""
        ids = [torch.tensor(job.prompt_ids, dtype=torch.long, device=self.device) for job in jobs]
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

    def _prefill_all(self, jobs: list[Job]) -> Prefilled:
        """Prompts without a prefix in padded forwards of up to PREFILL_TOKENS tokens; each prefix-tuning prompt
        alone, as its cache starts from its adapter's prefix. `jobs` holds the prefixed ones last."""
        plain = [job for job in jobs if not job.has_prefix]
        parts = [self._prefill(group) for group in token_groups(plain, PREFILL_TOKENS)]
        parts += [self._prefill_prefixed(job) for job in jobs[len(plain):]]
        if len(parts) == 1:
            return parts[0]
        logits = torch.cat([part[0] for part in parts])
        state = merge([part[1] for part in parts])
        return logits, state, [h for part in parts for h in part[2]], [n for part in parts for n in part[3]]

    @torch.inference_mode()
    def _prefill(self, jobs: list[Job]) -> Prefilled:
        """One forward over the jobs' prompts: last-position logits (jobs, vocab), the state, histories, lengths."""
        from transformers import DynamicCache, EncoderDecoderCache

        inputs, mask = self._prompt_inputs(jobs)
        kwargs = self._adapter_kwargs([job.adapter for job in jobs])
        if self.loaded.is_encoder_decoder:
            start = self._decoder_start()
            decoder_ids = torch.full((len(jobs), 1), start, dtype=torch.long, device=self.device)
            kwargs[self.cache_kwarg] = cache = EncoderDecoderCache(GrowingCache(), DynamicCache())
            out = self.loaded.model(**inputs, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=True, **kwargs)
            state = BatchState(cache, torch.ones_like(decoder_ids), out.encoder_last_hidden_state, mask)
            return out.logits[:, -1].float(), state, [[start]] * len(jobs), [1] * len(jobs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        kwargs[self.cache_kwarg] = cache = GrowingCache()
        kwargs.update(self._last_logits_only(jobs))
        out = self.loaded.model(**inputs, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        lengths = mask.sum(-1).tolist()
        keep_prompt_scores(jobs, out.logits)
        return out.logits[:, -1].float(), BatchState(cache, mask), [list(job.prompt_ids) for job in jobs], lengths

    @torch.inference_mode()
    def _prefill_prefixed(self, job: Job) -> Prefilled:
        """A prefix-tuning prompt: the cache starts as the adapter's per-layer key/value prefix, and positions count
        the virtual tokens (as peft's forward has them)."""
        cache = GrowingCache()
        for layer, (keys, values) in enumerate(job.adapter.prefix):
            cache.update(keys.clone(), values.clone(), layer)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        virtual = job.adapter.virtual_tokens
        length = virtual + ids.shape[1]
        mask = torch.ones(1, length, dtype=torch.long, device=self.device)
        positions = torch.arange(virtual, length, device=self.device).unsqueeze(0)
        kwargs = self._adapter_kwargs([job.adapter])
        kwargs[self.cache_kwarg] = cache
        kwargs.update(self._last_logits_only([job]))
        out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        keep_prompt_scores([job], out.logits)
        return out.logits[:, -1].float(), BatchState(cache, mask), [list(job.prompt_ids)], [length]

    def _last_logits_only(self, jobs: list[Job]) -> dict:
        """`logits_to_keep=1` where the model takes it and no job scores its prompt: the output layer then runs on
        each row's last position only, as `model.generate` runs it (on a small model, the output layer over every
        prompt position costs as much as the rest of the prefill)."""
        if self.keeps_logits is None:
            import inspect

            forward = unwrap_peft(self.loaded.model).forward
            self.keeps_logits = "logits_to_keep" in inspect.signature(forward).parameters
        if not self.keeps_logits or any(job.params.echo and job.params.logprobs is not None for job in jobs):
            return {}
        return {"logits_to_keep": 1}

    def _decoder_start(self) -> int:
        model = self.loaded.model
        start = getattr(model.generation_config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(model.config, "decoder_start_token_id", None)
        return start if start is not None else self.loaded.tokenizer.pad_token_id


def prompt_length(job: Job) -> int:
    """Positions of the job's prompt in a prefill: its ids and a prompt-tuning adapter's virtual tokens."""
    prompt = job.adapter.prompt if job.adapter is not None else None
    return len(job.prompt_ids) + (len(prompt) if prompt is not None else 0)


def token_groups(jobs: list[Job], budget: int) -> list[list[Job]]:
    """The jobs in order, cut into groups whose padded prompts (rows x longest) hold at most `budget` positions
    (a longer prompt is a group alone)."""
    groups: list[list[Job]] = []
    longest = 0
    for job in jobs:
        length = prompt_length(job)
        if groups and (len(groups[-1]) + 1) * max(longest, length) <= budget:
            groups[-1].append(job)
            longest = max(longest, length)
        else:
            groups.append([job])
            longest = length
    return groups


def keep_prompt_scores(jobs: list[Job], logits: torch.Tensor) -> None:
    """For jobs that echo their prompt with log-probabilities, keep the log-softmax at the prompt's positions.

    logits: (jobs, padded length, vocab), each row's prompt at its end (left padding, virtual tokens first)."""
    for row, job in enumerate(jobs):
        if job.params.echo and job.params.logprobs is not None:
            length = len(job.prompt_ids)
            job.prompt_scores = raw_logprobs(logits[row, logits.shape[1] - length:-1])  # position i predicts token i + 1
