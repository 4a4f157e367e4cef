"""Tokenising prompt/completion examples for supervised fine-tuning, batching, and packing.

The loss covers completion tokens only. For decoder-only models prompt and completion are tokenised
separately and joined, so the boundary between them is exact whatever the tokenizer merges; prompt positions
get the label -100. For encoder-decoder models the prompt is the encoder input and the completion the labels.
Every completion ends with EOS, so the tuned model learns to stop.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import inspect
from dataclasses import dataclass

import torch

from ..data import Example
from ..models import unwrap_peft

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """Decoder-only: same length as input_ids, -100 on prompt positions. Encoder-decoder: the target ids."""

    @property
    def target_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def tokenize(examples: list[Example], tokenizer, is_encoder_decoder: bool, max_length: int) -> tuple[list[Tokenized], int, int]:
    """(rows, how many were truncated, how many were dropped because no completion token fit)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    targets = tokenizer([e.completion or "" for e in examples], add_special_tokens=False)["input_ids"]
    rows, truncated, dropped = [], 0, 0
    for prompt, target in zip(prompts, targets):
        target = target + eos
        if is_encoder_decoder:
            row = Tokenized(prompt[:max_length], target[:max_length])
            truncated += len(prompt) > max_length or len(target) > max_length
        else:
            ids, labels = prompt + target, [IGNORE] * len(prompt) + target
            truncated += len(ids) > max_length
            row = Tokenized(ids[:max_length], labels[:max_length])
        if row.target_tokens == 0:
            dropped += 1
            continue
        rows.append(row)
    return rows, truncated, dropped


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch, shuffled by (seed, epoch): the same on every resume."""
    generator = torch.Generator().manual_seed(seed * 10_007 + epoch)
    order = torch.randperm(count, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def collate(rows: list[Tokenized], pad_id: int, is_encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and carries label -100."""
    batch = {
        "input_ids": _pad([r.input_ids for r in rows], pad_id),
        "attention_mask": _pad([[1] * len(r.input_ids) for r in rows], 0),
        "labels": _pad([r.labels for r in rows], IGNORE),
    }
    if is_encoder_decoder:
        # Decoder inputs are the labels shifted right; the model builds them from `labels` itself.
        batch["decoder_attention_mask"] = _pad([[1] * len(r.labels) for r in rows], 0)
    return batch


def pack(rows: list[Tokenized], max_length: int) -> list[Tokenized]:
    """Concatenate decoder-only rows into sequences of at most `max_length` tokens, by best-fit decreasing.

    Longest rows first, each into the fullest sequence it still fits (as trl packs): fewer, fuller sequences
    than filling them in file order, so a packed step carries more completion tokens. Position ids restart
    at 0 for each row (see `collate_packed`), which transformers reads as separate sequences: no attention
    crosses a row boundary. A row's first token is a prompt token (label -100), so no loss is taken across
    the boundary either.
    """
    bins: list[list[Tokenized]] = []
    free: list[tuple[int, int]] = []  # (tokens still free, bin index), sorted
    for row in sorted(rows, key=lambda r: -len(r.input_ids)):  # stable: ties keep file order
        size = len(row.input_ids)
        at = bisect.bisect_left(free, (size, -1))  # the bin with the least room that still holds the row
        space, index = free.pop(at) if at < len(free) else (max_length, len(bins))
        if index == len(bins):
            bins.append([])
        bins[index].append(row)
        if space > size:
            bisect.insort(free, (space - size, index))
    return [PackedRow([t for r in group for t in r.input_ids], [t for r in group for t in r.labels],
                      tuple(len(r.input_ids) for r in group)) for group in bins]


@dataclass(frozen=True)
class PackedRow(Tokenized):
    lengths: tuple[int, ...] = ()
    """Length of each original row inside this sequence."""


def collate_packed(rows: list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows with restarting position ids and no 2D attention mask (transformers' packed format)."""
    width = max(len(r.input_ids) for r in rows)
    positions = []
    for row in rows:
        ids = [p for length in row.lengths for p in range(length)]
        positions.append(ids + list(range(width - len(ids))))  # the padding tail is one more "sequence"
    return {
        "input_ids": _pad([r.input_ids for r in rows], pad_id),
        "labels": _pad([r.labels for r in rows], IGNORE),
        "position_ids": torch.tensor(positions),
    }


def completion_loss_sum(model, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> torch.Tensor:
    """Summed cross-entropy over completion tokens (divided by the step's token count by the caller)."""
    return completion_token_losses(model, batch, is_encoder_decoder)[0].sum()


def completion_token_losses(model, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every completion token, (tokens,), and the batch row each one belongs to, (tokens,).

    Decoder-only: the output head runs only at the positions that predict a completion token. The forward
    goes through the (possibly DDP- or FSDP-wrapped) model as usual; `logits_to_keep` drops the positions
    before the first scored one, and a hook on the head keeps only the scored ones of the rest. On dialogue
    summarisation about 10% of the positions are scored; a 30M Llama's training step is ~15% faster.
    """
    labels = batch["labels"]
    # No KV cache: training does not need one, and transformers only reads packed position ids without it.
    inputs = {key: value for key, value in batch.items() if key != "labels"} | {"use_cache": False}
    if is_encoder_decoder:
        # Shift the labels right ourselves: passing `labels` would make the model compute a second, mean loss.
        inputs["decoder_input_ids"] = decoder_input_ids(model, labels)
        return _token_losses(model(**inputs).logits, labels)  # (batch, seq, vocab)
    keep = positions_to_score(labels)
    if keep < labels.shape[1] and accepts_logits_to_keep(model):
        window = labels[:, -keep:]  # (batch, keep): the labels from the first scored position on
        scored = torch.zeros_like(window, dtype=torch.bool)
        scored[:, :-1] = window[:, 1:] != IGNORE  # position t predicts token t + 1
        with scored_positions_only(model, scored) as selection:
            logits = model(**inputs, logits_to_keep=keep).logits
        if selection["applied"]:  # (scored positions, vocab), in row-major order
            targets = window[:, 1:][scored[:, :-1]]
            losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            return losses, scored.nonzero()[:, 0]
    else:
        logits = model(**inputs).logits  # (batch, seq, vocab)
    # The logits are those of the last positions: prompt tuning's virtual tokens come first.
    width = min(logits.shape[1], labels.shape[1])
    return _token_losses(logits[:, -width:][:, :-1], labels[:, -width:][:, 1:])


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, vocab) logits against (batch, seq) labels: the losses where a label is set, and their rows."""
    mask = labels != IGNORE
    return torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="none"), mask.nonzero()[:, 0]


@contextlib.contextmanager
def scored_positions_only(model, scored: torch.Tensor):
    """Feed the output head only the hidden states where `scored` (batch, keep) is true.

    Yields a dict whose "applied" says whether it happened: a head input of another shape (an architecture
    that does something else before its head) is left alone, and the caller scores the full logits.
    """
    base = transformers_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    selection = {"applied": False}
    if head is None:
        yield selection
        return

    def select(module, args):
        hidden = args[0]  # (batch, keep, hidden)
        if hidden.dim() != 3 or hidden.shape[:2] != scored.shape:
            return None
        selection["applied"] = True
        return (hidden[scored], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield selection
    finally:
        handle.remove()


def positions_to_score(labels: torch.Tensor) -> int:
    """How many last positions of a decoder-only batch predict a completion token somewhere in it."""
    targets = labels[:, 1:] != IGNORE  # (batch, seq - 1): position t predicts token t + 1
    if not targets.any():
        return labels.shape[1]
    first = int(targets.any(dim=0).int().argmax())  # the earliest position any row is scored at
    return labels.shape[1] - first


def accepts_logits_to_keep(model) -> bool:
    return _forward_takes(type(transformers_model(model)), "logits_to_keep")


@functools.lru_cache(maxsize=None)
def _forward_takes(model_class: type, name: str) -> bool:
    return name in inspect.signature(model_class.forward).parameters


def count_targets(batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> int:
    labels = batch["labels"] if is_encoder_decoder else batch["labels"][:, 1:]
    return int((labels != IGNORE).sum())


def decoder_input_ids(model, labels: torch.Tensor) -> torch.Tensor:
    """An encoder-decoder's decoder inputs: `labels` shifted right, as the (possibly wrapped) model builds them."""
    return transformers_model(model).prepare_decoder_input_ids_from_labels(labels=labels)


def transformers_model(model):
    """The transformers model inside DDP or a DeepSpeed engine (both hold it as .module) and a peft wrapper."""
    return unwrap_peft(getattr(model, "module", model))
