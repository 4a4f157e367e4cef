"""The copying measurement (evaluate/induction.py): repeated random sequences of ordinary tokens, losses per copy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcycle.evaluate.induction import copy_losses, copy_ratio, ordinary_token_ids, repeated_sequences
from llmcycle.models import load_model


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_copy_ratio_of_a_tiny_model_is_a_finite_positive_number(kind, request):
    folder = request.getfixturevalue(f"{kind}_dir")
    ratio = copy_ratio(str(folder), sequences=4, length=12, seed=0)
    first, second = copy_losses(str(folder), sequences=4, length=12, seed=0)
    assert math.isfinite(ratio) and ratio > 0 and ratio == pytest.approx(second / first)
    assert first > 0 and second > 0


def test_sequences_are_drawn_from_ordinary_tokens_and_repeat_exactly(t5_dir):
    tokenizer = load_model(str(t5_dir), dtype="float32").tokenizer
    ordinary = ordinary_token_ids(tokenizer, len(tokenizer))
    specials = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    assert len(ordinary) > 100 and not specials & set(ordinary.tolist())
    ids = repeated_sequences(ordinary, sequences=3, length=10, seed=5)
    assert ids.shape == (3, 20) and (ids[:, :10] == ids[:, 10:]).all()
    assert set(ids.flatten().tolist()) <= set(ordinary.tolist())
    assert (repeated_sequences(ordinary, 3, 10, seed=5) == ids).all() and not (repeated_sequences(ordinary, 3, 10, seed=6) == ids).all()
    assert np.unique(ids[:, :10]).size > 10  # drawn across the vocabulary, not one token
