"""Does a model copy from its context? The repeated-random-sequence test of induction heads (Olsson et al., 2022).

A sequence of tokens drawn uniformly from the model's ordinary vocabulary is unpredictable the first time; the
second time, a model that copies (attends to where the current token occurred before and predicts what followed
it) predicts it almost perfectly. `copy_ratio` is the mean loss on the second copy over the mean loss on the
first: about 1 for a model that cannot copy, well under 0.5 for one that can.

The first token of each copy is left out of both means: nothing in the context announces it. A decoder-only
model reads the sequence twice in one input. An encoder-decoder model's decoder writes it twice, with an input
that holds nothing but end-of-sequence: the same ability, in the part of the model that writes, with nothing
to copy from but what it has written (copying from the input is what text infilling teaches a T5; this measures
induction, as for the decoder-only model).
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import load_model


def ordinary_token_ids(tokenizer, vocab_size: int) -> np.ndarray:
    """Every id of the tokenizer's own vocabulary below `vocab_size`, less special and added tokens (sentinels, masks)."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return np.array(sorted(i for i in tokenizer.get_vocab().values() if i < vocab_size and i not in excluded))


def repeated_sequences(token_ids: np.ndarray, sequences: int, length: int, seed: int) -> torch.Tensor:
    """(sequences, 2 * length) ids: each row a random sequence followed by itself."""
    drawn = np.random.default_rng(seed).choice(token_ids, size=(sequences, length))
    return torch.as_tensor(np.concatenate([drawn, drawn], axis=1), dtype=torch.long)


def token_losses(model, tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """(sequences, 2 * length) loss of each token of `ids` given the tokens before it; position 0's is NaN for a
    decoder-only model, which has nothing to predict it from."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            source = torch.full((len(ids), 1), tokenizer.eos_token_id, device=device)
            logits = model(input_ids=source, labels=ids).logits.float()  # (sequences, 2 * length, vocab)
            return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none").cpu()
        logits = model(input_ids=ids).logits.float()[:, :-1]  # predicts positions 1..end
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()
        return torch.cat([torch.full((len(ids), 1), float("nan")), losses], dim=1)


def model_copy_losses(model, tokenizer, sequences: int = 16, length: int = 40, seed: int = 0) -> tuple[float, float]:
    """copy_losses of a model in memory (in whatever train/eval mode it is in)."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    ids = repeated_sequences(ordinary_token_ids(tokenizer, vocab_size), sequences, length, seed)
    losses = token_losses(model, tokenizer, ids)
    return losses[:, 1:length].mean().item(), losses[:, length + 1 :].mean().item()


def copy_losses(model_dir: str, sequences: int = 16, length: int = 40, seed: int = 0) -> tuple[float, float]:
    """(mean loss on the first copy, on the second), in nats a token, the first token of each copy left out."""
    loaded = load_model(str(model_dir), dtype="float32")
    return model_copy_losses(loaded.model, loaded.tokenizer, sequences, length, seed)


def copy_ratio(model_dir: str, sequences: int = 16, length: int = 40, seed: int = 0) -> float:
    """Mean loss on the second copy of a repeated random sequence over the mean loss on the first (see above)."""
    first, second = copy_losses(model_dir, sequences, length, seed)
    return second / first
