"""Copying warm-up: a decoder-only model's induction heads formed by supervising two heads, before pre-training.

A transformer copies from its context with two heads (Olsson et al., 2022): a previous-token head writes each
position's preceding token into it, and an induction head, in a later layer, attends from the current token to
the position after that token's previous occurrence and writes what stands there. Next-token prediction finds
them only after a long plateau: on this project's corpus, even with a fifth of its documents repeating random
spans, the embedded Llama's copy ratio (evaluate/induction.py) stayed at 1.00 through 4.2 epochs, and on pure
repeated random sequences through 350 steps of 4,096 tokens (bench/RESULTS.md).

The warm-up trains on rows of random token sequences each repeated at once, with the language-model loss plus
four cross-entropy terms that say what the two heads should do:
- where they attend: layer 0's head 0 to the previous position; layer 1's head 0, from a token seen before, to
  the position right after its previous occurrence;
- what they write: layer 0's attention output, read through the model's own final norm and output layer,
  predicts the previous token; layer 1's predicts the next token (the one its induction head attends to). Read
  by the model's own output layer, what the induction head writes is what the model predicts: with separate
  read-outs instead, thrown away afterwards, the copy ratio was still 1.00 after 400 steps.
The heads are ordinary attention heads: the model saved after pre-training is a plain transformers model.
Measured on a 6-layer, 256-wide Llama (rope_theta 1e6): the attention targets are met after about 160 steps, and
the copy ratio falls with them (bench/RESULTS.md has the run).

Written here because no library trains attention patterns: transformers' Trainer and trl train on losses of a
model's outputs. The attention probabilities come from the eager attention implementation, which this warm-up
switches to and back from.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..console import note, progress
from ..errors import UserError
from ..evaluate.induction import model_copy_losses, ordinary_token_ids
from ..models import context_window

ROW_TOKENS = 256  # or the model's context window, if shorter
STEP_TOKENS = 4096
SPAN = (8, 40)  # lengths of the random sequences, each followed by its copy
PREVIOUS_LAYER, INDUCTION_LAYER = 0, 1


def repeat_rows(token_ids: np.ndarray, rows: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """(rows, length) ids: random sequences of SPAN lengths, each followed by itself, back to back."""
    out = []
    for _ in range(rows):
        row: list[int] = []
        while len(row) < length:
            drawn = rng.choice(token_ids, int(rng.integers(*SPAN))).tolist()
            row += drawn + drawn
        out.append(row[:length])
    return torch.tensor(out, dtype=torch.long)


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """(rows, positions): for each position whose token occurred before, the position after its latest earlier
    occurrence; -1 elsewhere."""
    targets = torch.full(ids.shape, -1, dtype=torch.long)
    for row, tokens in enumerate(ids.tolist()):
        last: dict[int, int] = {}
        for position, token in enumerate(tokens):
            if token in last:
                targets[row, position] = last[token] + 1
            last[token] = position
    return targets


def attention_modules(model) -> list[torch.nn.Module]:
    """The model's self-attention modules in layer order (their class names end in 'Attention')."""
    return [module for module in model.modules() if type(module).__name__.endswith("Attention")]


def copy_warmup(model, tokenizer, steps: int, lr: float, seed: int) -> dict:
    """Train `model` (decoder-only, at least two layers) for `steps` steps of the warm-up; returns its record:
    steps, seconds, final losses of each term, and the copy ratio before and after."""
    if model.config.is_encoder_decoder:
        raise UserError("--copy-warmup-steps is for decoder-only models (a T5 or BART copies from its input through "
                        "cross-attention; pre-train it with --objective text-infilling)")
    modules = attention_modules(model)
    if len(modules) < 2:
        raise UserError(f"--copy-warmup-steps needs a model of at least 2 layers; this one has {len(modules)}")
    vocab = model.get_output_embeddings().weight.shape[0]
    token_ids = ordinary_token_ids(tokenizer, vocab)
    rng = np.random.default_rng([seed, 1234])
    device = next(model.parameters()).device
    readout = torch.nn.Sequential(final_norm(model), model.get_output_embeddings())
    outputs: dict[int, torch.Tensor] = {}
    hooks = [modules[layer].register_forward_hook(_keep_output(outputs, layer)) for layer in (PREVIOUS_LAYER, INDUCTION_LAYER)]
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")  # attention probabilities are returned by the eager path only
    before = copy_ratio_of(model, tokenizer, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    length = min(ROW_TOKENS, context_window(model.config, tokenizer) or ROW_TOKENS)
    rows = STEP_TOKENS // length
    start, losses = time.perf_counter(), {}
    model.train()
    try:
        with progress() as bar:
            task = bar.add_task("copying warm-up", total=steps)
            for step in range(steps):
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, (step + 1) / 20)
                ids = repeat_rows(token_ids, rows, length, rng).to(device)
                out = model(input_ids=ids, labels=ids, output_attentions=True)
                losses = _head_losses(out.attentions, outputs, readout, ids)
                total = out.loss + sum(losses.values())
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses = {"lm": out.loss.item(), **{name: value.item() for name, value in losses.items()}}
                described = ", ".join(f"{name} {value:.3f}" for name, value in losses.items())
                bar.update(task, advance=1, description=f"copying warm-up: {described}")
                if (step + 1) % 100 == 0 and not bar.console.is_terminal:  # the bar is hidden: say where it is
                    note(f"copying warm-up, step {step + 1}/{steps}: {described}")
    finally:
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(implementation)
    after = copy_ratio_of(model, tokenizer, seed)
    seconds = time.perf_counter() - start
    note(f"copying warm-up: {steps} steps in {seconds:.0f} s; copy ratio {before:.2f} -> {after:.2f}"
         + ("" if after < 0.5 else " (not copying yet: more steps, or a higher --lr)"))
    return {"steps": steps, "seconds": round(seconds, 1), "final_losses": {k: round(v, 4) for k, v in losses.items()},
            "copy_ratio_before": round(before, 4), "copy_ratio_after": round(after, 4)}


def _keep_output(outputs: dict, layer: int):
    def hook(module, args, output):
        outputs[layer] = output[0] if isinstance(output, tuple) else output
    return hook


def final_norm(model) -> torch.nn.Module:
    """The norm before the output layer (Llama's `norm`, GPT-2's `ln_f`), or none."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        if isinstance(module := getattr(base, name, None), torch.nn.Module):
            return module
    return torch.nn.Identity()


def _head_losses(attentions, outputs: dict, readout, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four supervision terms (see the module docstring), each a mean cross-entropy in nats."""
    rows, length = ids.shape
    positions = torch.arange(1, length, device=ids.device)
    previous = attentions[PREVIOUS_LAYER][:, 0]  # (rows, queries, keys) of head 0
    losses = {"previous_head": -torch.log(previous[:, positions, positions - 1] + 1e-9).mean()}
    targets = induction_targets(ids.cpu()).to(ids.device)
    row, query = (targets >= 0).nonzero(as_tuple=True)
    induction = attentions[INDUCTION_LAYER][:, 0]
    losses["induction"] = -torch.log(induction[row, query, targets[row, query]] + 1e-9).mean()
    read_previous = readout(outputs[PREVIOUS_LAYER][:, 1:])
    losses["previous_read"] = torch.nn.functional.cross_entropy(read_previous.flatten(0, 1), ids[:, :-1].flatten())
    inside = query < length - 1  # the next token of the last position is not in the row
    row, query = row[inside], query[inside]
    read_next = readout(outputs[INDUCTION_LAYER][row, query])
    losses["copy_read"] = torch.nn.functional.cross_entropy(read_next, ids[row, query + 1])
    return losses


def copy_ratio_of(model, tokenizer, seed: int) -> float:
    """evaluate/induction.py's copy ratio of a model in memory, measured in eval mode."""
    was_training = model.training
    model.eval()
    first, second = model_copy_losses(model, tokenizer, seed=seed)
    model.train(was_training)
    return second / first
