"""The offline entry point to the serving engine, as vLLM's `LLM` class sits over its engine.

Every verb that generates (`generate`, `prompt`, `eval`, the RAG answers, `label`, the recipes) decodes here, through
the same continuous-batching engine, sampler and logits processors as `llmcycle serve`. So a setting (temperature,
top-k/top-p, a penalty, the n-gram block) means the same thing in every verb, and a served temperature-0 answer
equals what `llmcycle generate` prints.

The engine is driven on the caller's thread (`Engine.step` until it has no work); nothing listens on a port. The
model already loaded by the verb is served as it is: its active LoRA adapter per row through peft's mixed-batch
path, a prompt-tuning adapter's virtual tokens before each prompt, a prefix-tuning adapter's key/value prefix in
each row's cache (which `model.generate` under peft mishandles; see engine.py's beam path).

Sampling is seeded per row (the run's seed and the row's index), so a sampled output depends on neither the batch
size nor the other rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..console import progress
from ..deploy.serve.engine import Engine
from ..deploy.serve.jobs import Event, Failed, Finished, Job, TextDelta
from ..deploy.serve.models import (
    LORA_TYPES,
    PREFIX_TYPES,
    Adapter,
    ServedModels,
    prompt_of,
)
from ..deploy.serve.protocol import SamplingParams
from ..errors import UserError
from ..models import LoadedModel
from .settings import GenerationSettings


def row_seed(seed: int, row: int) -> int:
    """A 32-bit seed for row `row` of a run seeded `seed` (a CPU torch.Generator keeps only 32 bits of its seed)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{row}".encode(), digest_size=4).digest(), "little")


def sampling_params(settings: GenerationSettings, row: int) -> SamplingParams:
    """The serving engine's parameters for row `row` of a run with these settings."""
    sampled = settings.do_sample
    return SamplingParams(
        max_tokens=settings.max_new_tokens,
        temperature=settings.temperature if sampled else 0.0,
        top_k=settings.top_k, top_p=settings.top_p,
        seed=row_seed(settings.seed, row) if sampled else None,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
    )


def served_as_loaded(loaded: LoadedModel) -> ServedModels:
    """`loaded` as the engine serves it: its active peft adapter (if any) serves the base name."""
    model = loaded.model
    configs = getattr(model, "peft_config", None)
    if not configs:
        return ServedModels(loaded, loaded.name, None)
    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    peft_type = configs[name].peft_type.value
    adapter = Adapter(name, loaded.name, peft_type, rank=getattr(configs[name], "r", None))
    if peft_type not in LORA_TYPES:  # prompt learning: the engine adds what peft's forward would, to the base model
        adapter = _prompt_adapter(loaded, adapter)
        loaded = LoadedModel(model.get_base_model(), loaded.tokenizer, loaded.kind, loaded.name)
    return ServedModels(loaded, loaded.name, name, adapters={name: adapter})


def _prompt_adapter(loaded: LoadedModel, adapter: Adapter) -> Adapter:
    """The virtual tokens (or per-layer key/value prefix) of the model's active prompt-learning adapter."""
    if adapter.peft_type in PREFIX_TYPES:
        if loaded.is_encoder_decoder:
            raise UserError("generating with a prefix-tuning adapter on an encoder-decoder model is not supported; "
                            "merge it first (llmcycle merge) or use LoRA or prompt tuning")
        adapter.prefix = prompt_of(loaded.model, prefix=True)
    else:
        adapter.prompt = prompt_of(loaded.model, prefix=False)
    return adapter


@dataclass
class _Collector:
    """What one row's events leave: its text, and the error that failed it."""

    text: str = ""
    error: str | None = None
    done: bool = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
        elif isinstance(event, Finished):
            self.done = True
        elif isinstance(event, Failed):
            self.error, self.done = event.error.message, True


def run_engine(loaded: LoadedModel, prompt_ids: list[list[int]], settings: GenerationSettings,
               description: str = "generating") -> list[str]:
    """Complete every token prompt through the serving engine, `settings.batch_size` rows at a time; the texts
    (special tokens skipped, whitespace stripped) in input order."""
    served = served_as_loaded(loaded)
    engine = Engine(served, max_num_seqs=settings.batch_size)
    adapter = served.adapter_for(served.base_name)
    rows = [_Collector() for _ in prompt_ids]
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # longest first: least padding
    engine.submit([Job(served.base_name, adapter, prompt_ids[i], sampling_params(settings, i), rows[i], streaming=False)
                   for i in order])
    try:
        with progress() as bar:
            task, finished = bar.add_task(description, total=len(rows)), 0
            while engine.has_work():
                engine.step()
                now = sum(row.done for row in rows)
                bar.advance(task, now - finished)
                finished = now
    finally:
        engine.runner.close()
    failed = next((row.error for row in rows if row.error is not None), None)
    if failed is not None:
        raise UserError(f"{description}: {failed}")
    return [row.text for row in rows]
