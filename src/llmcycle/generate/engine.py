"""`generate(loaded, prompts, settings)`: what every verb calls to complete prompts.

Greedy decoding and sampling go through the serving engine (offline.py: continuous batching, the same sampler and
logits processors as `llmcycle serve`), so every verb decodes as the server does. Under greedy decoding the outputs
are those of generating each prompt alone: padding is masked and every row continues from its own last token. The
one caveat is float rounding: a batch runs matrix products of another shape, so where the two best next tokens
score within ~1e-4 of each other (a near-tie) the argmax can differ. In float64 the outputs are identical
(bench/RESULTS.md).

Beam search, which the server does not offer, keeps a separate path: static batches over transformers'
`model.generate`, prompts sorted by length (longest first, so an out-of-memory batch shows up at once).
"""

from __future__ import annotations

import torch

from ..console import progress
from ..errors import UserError
from ..models import LoadedModel
from .settings import GenerationSettings


def token_lengths(loaded: LoadedModel, prompts: list[str]) -> list[int]:
    encoded = loaded.tokenizer(prompts, add_special_tokens=True)["input_ids"]
    return [len(ids) for ids in encoded]


def check_fits(loaded: LoadedModel, lengths: list[int], wheres: list[str], max_new_tokens: int) -> None:
    """A prompt longer than the model's context window is an error that names its row."""
    window = loaded.context_window
    if window is None:
        return
    # Decoder-only models hold prompt and completion in one window; encoder-decoder models only the prompt.
    reserve = 0 if loaded.is_encoder_decoder else max_new_tokens
    for length, where in zip(lengths, wheres):
        if length + reserve > window:
            need = f"{length} tokens" + (f" + {reserve} new tokens" if reserve else "")
            raise UserError(f"{where}: the prompt needs {need}, more than the model's context window of {window}")


def generate(loaded: LoadedModel, prompts: list[str], settings: GenerationSettings, description: str = "generating") -> list[str]:
    """Complete every prompt; returns the completions (without the prompt) in input order."""
    settings.validate()
    if not prompts:
        return []
    if settings.num_beams > 1:
        return beam_search(loaded, prompts, settings, description)
    from .offline import run_engine  # the serving engine: imported only by verbs that generate

    ids = loaded.tokenizer(prompts, add_special_tokens=True)["input_ids"]
    return run_engine(loaded, ids, settings, description)


@torch.inference_mode()
def beam_search(loaded: LoadedModel, prompts: list[str], settings: GenerationSettings, description: str = "generating") -> list[str]:
    """Beam search through transformers' `generate`, in static batches of prompts of similar length."""
    lengths = token_lengths(loaded, prompts)
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    generation_config = settings.to_transformers(loaded)
    results: list[str | None] = [None] * len(prompts)
    # transformers' generate samples from the global RNG; fork it, so seeding here leaves the caller's stream alone.
    devices = [loaded.device.index or 0] if loaded.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), progress() as bar:
        torch.manual_seed(settings.seed)
        task = bar.add_task(description, total=len(prompts))
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            for index, text in zip(batch, _generate_batch(loaded, [prompts[i] for i in batch], generation_config)):
                results[index] = text
            bar.advance(task, len(batch))
    return results  # type: ignore[return-value]


def _generate_batch(loaded: LoadedModel, prompts: list[str], generation_config) -> list[str]:
    tokenizer = loaded.tokenizer
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(loaded.device)
    soft = _soft_prompt(loaded)
    if soft is not None:
        output = _generate_with_soft_prompt(loaded.model, soft, encoded, generation_config)  # only the new tokens
    else:
        output = loaded.model.generate(**encoded, generation_config=generation_config)  # (batch, seq)
        if not loaded.is_encoder_decoder:
            output = output[:, encoded["input_ids"].shape[1] :]  # drop the (left-padded) prompt
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def _soft_prompt(loaded: LoadedModel):
    """The active adapter's config when it is a decoder-only prompt-learning adapter, else None (beam search only:
    greedy decoding and sampling run such adapters in the serving engine).

    peft's own `generate` for these (0.21 under transformers 5) puts the virtual tokens into the cache again at every
    step, since it looks for `past_key_values` where transformers now passes `cache`: the first new token is already
    wrong. So llmcycle puts the virtual-token embeddings before the prompt itself, as peft's forward does, and
    generates with the base model. Prefix tuning's per-layer key/value prefix has no such route: it is refused.
    """
    config = getattr(loaded.model, "active_peft_config", None)
    if loaded.is_encoder_decoder or config is None or not getattr(config, "is_prompt_learning", False):
        return None
    if config.peft_type.value == "PREFIX_TUNING":
        raise UserError("beam search with a prefix-tuning adapter on a decoder-only model is not supported (peft's "
                        "generate mishandles its cache under transformers 5); decode greedily or sample (--num-beams 1)")
    return config


def _generate_with_soft_prompt(model, config, encoded: dict, generation_config) -> torch.Tensor:
    """(batch, new tokens): the base model generates after [virtual tokens; left-padded prompt]."""
    batch = encoded["input_ids"].shape[0]
    virtual = model.get_prompt(batch_size=batch)[:, : config.num_virtual_tokens]  # (batch, virtual tokens, hidden)
    words = model.get_input_embeddings()(encoded["input_ids"])  # (batch, prompt, hidden)
    embeds = torch.cat([virtual.to(words.dtype), words], dim=1)
    mask = torch.cat([torch.ones(batch, virtual.shape[1], dtype=encoded["attention_mask"].dtype, device=words.device),
                      encoded["attention_mask"]], dim=1)
    return model.get_base_model().generate(inputs_embeds=embeds, attention_mask=mask, generation_config=generation_config)
