"""The running batch's cache: GrowingLayer holds what transformers' DynamicLayer holds, written in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from llmcycle.deploy.serve.batch import BatchState, GrowingCache, GrowingLayer, merge, select


def states(rows: int, positions: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, positions, 8, generator=generator), torch.randn(rows, 2, positions, 8, generator=generator)


def test_growing_layer_returns_what_dynamic_layer_returns_through_prefill_growth_and_reassignment():
    growing, dynamic = GrowingLayer(), DynamicLayer()
    for step, positions in enumerate([5] + [1] * (GrowingLayer.ROOM + 3)):  # past its room: it grows
        keys, values = states(3, positions, step)
        for got, want in zip(growing.update(keys, values), dynamic.update(keys, values)):
            assert torch.equal(got, want)
    assert growing.get_seq_length() == dynamic.get_seq_length() == 5 + GrowingLayer.ROOM + 3
    growing.keys, growing.values = growing.keys[1:], growing.values[1:]  # as select does: a new buffer with room
    dynamic.keys, dynamic.values = dynamic.keys[1:], dynamic.values[1:]
    keys, values = states(2, 1, 99)
    buffer = growing._keys
    for got, want in zip(growing.update(keys, values), dynamic.update(keys, values)):
        assert torch.equal(got, want)
    assert growing._keys is buffer  # the step was written in place


def test_merged_and_selected_rows_keep_their_keys():
    parts = []
    for length, seed in ((4, 1), (7, 2)):
        cache = GrowingCache()
        cache.update(*states(1, length, seed), 0)
        parts.append((BatchState(cache, torch.ones(1, length, dtype=torch.long)), states(1, length, seed)))
    merged = merge([state for state, _ in parts])
    layer = merged.cache.layers[0]
    assert layer.keys.shape == (2, 2, 7, 8) and merged.mask.tolist() == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]
    assert torch.equal(layer.keys[0, :, 3:], parts[0][1][0][0]) and torch.equal(layer.values[1], parts[1][1][1][0])
    kept = select(merged, [0])  # the short row alone: the padding columns go
    assert torch.equal(kept.cache.layers[0].keys[0], parts[0][1][0][0]) and kept.mask.tolist() == [[1, 1, 1, 1]]
