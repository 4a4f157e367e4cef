"""The running batch: GrowingLayer holds what transformers' DynamicLayer holds, written in place; prefills are cut
into groups of at most PREFILL_TOKENS padded positions (runner.token_groups)."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from llmcycle.deploy.serve.batch import BatchState, GrowingCache, GrowingLayer, merge, select
from llmcycle.deploy.serve.runner import token_groups


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
    assert not layer.keys[0, :, :3].any() and not layer.values[0, :, :3].any()  # padding: zeros, never stale memory
    buffer = layer._keys
    merged.cache.update(*states(2, 1, 3), 0)  # the merged buffers have room: the next step is written in place
    assert layer._keys is buffer and layer.keys.shape == (2, 2, 8, 8)
    merged.mask = torch.cat([merged.mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    kept = select(merged, [0])  # the short row alone: the padding columns go
    assert torch.equal(kept.cache.layers[0].keys[0, :, :4], parts[0][1][0][0]) and kept.mask.tolist() == [[1] * 5]


class _Job:
    def __init__(self, length: int, virtual: int = 0):
        self.prompt_ids = [0] * length
        self.adapter = type("Adapter", (), {"prompt": torch.zeros(virtual, 4) if virtual else None})() if virtual else None


def test_prefill_groups_keep_order_and_count_padding_and_virtual_tokens():
    jobs = [_Job(30), _Job(20), _Job(10), _Job(10, virtual=12), _Job(5), _Job(50)]
    groups = token_groups(jobs, 40)
    # 1 and 2 fit (2 x 20); 3's 12 virtual tokens make it 22 long, so 4 no longer fits beside it (2 x 22 > 40)
    assert [[jobs.index(job) for job in group] for group in groups] == [[0], [1, 2], [3], [4], [5]]
    assert [job for group in groups for job in group] == jobs  # the engine's row index relies on the order
    assert token_groups(jobs, 10**6) == [jobs]
