"""The running batch's tensors: rows of different lengths in one KV cache, joined and left between steps.

Written here because transformers' own continuous batching (paged attention, `generate_batch`) serves neither
encoder-decoder models nor peft's per-row adapters. Each row is prefilled alone; joining left-pads every row's
self-attention cache to the longest, and the attention mask hides the padding. Decoder-only rows get their own
position ids, so a padded row computes what it would alone (up to float rounding of the wider matrices).
Encoder-decoder rows keep their encoder states and cross-attention cache right-padded, with the encoder mask.
Leaving selects the remaining rows and drops padding columns no row needs any more.

Each layer's keys and values live in a buffer with room to grow (GrowingLayer): a decoding step writes its one
position in place. transformers' DynamicLayer concatenates the whole cache with the new position instead, a copy
of every layer's keys and values at every step (about a sixth of a small model's decoding step on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class _Grown:
    """GrowingLayer's `keys` or `values`: read, the used part of a buffer with room after it; assigned, a copy of
    the tensor into a new buffer. Each keeps its own length: between the two assignments of a select they differ."""

    def __set_name__(self, owner, name: str):
        self.buffer, self.used = f"_{name}", f"_{name}_used"

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        buffer = getattr(layer, self.buffer, None)
        return None if buffer is None else buffer[..., : getattr(layer, self.used), :]

    def __set__(self, layer, tensor: torch.Tensor | None) -> None:
        buffer, used = _with_room(tensor, layer.ROOM)
        setattr(layer, self.buffer, buffer)
        setattr(layer, self.used, used)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with ROOM free positions after them.

    Assigning `keys` or `values` (as batch.py's merge and select do, and transformers' own cache methods) copies
    the tensor into a new buffer; `update` writes the new positions in place and grows the buffers when full."""

    ROOM = 64
    keys = _Grown()
    values = _Grown()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._keys_used, self._keys_used + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._keys = _grown(self._keys, start, end + self.ROOM)
            self._values = _grown(self._values, start, end + self.ROOM)
        self._keys[..., start:end, :] = key_states
        self._values[..., start:end, :] = value_states
        self._keys_used = self._values_used = end
        return self.keys, self.values

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, used: int) -> None:
        """Take buffers whose first `used` positions hold the keys and values, as they are (no copy)."""
        self._keys, self._values, self._keys_used, self._values_used = keys, values, used, used
        self.device, self.is_initialized = keys.device, True


def _with_room(tensor: torch.Tensor | None, room: int) -> tuple[torch.Tensor | None, int]:
    """A buffer holding `tensor` (batch, heads, positions, dim) then `room` free positions; and its length."""
    if tensor is None:
        return None, 0
    return _grown(tensor, tensor.shape[-2], tensor.shape[-2] + room), tensor.shape[-2]


def _grown(buffer: torch.Tensor, used: int, size: int) -> torch.Tensor:
    grown = buffer.new_empty(*buffer.shape[:-2], size, buffer.shape[-1])
    grown[..., :used, :] = buffer[..., :used, :]
    return grown


class GrowingCache(DynamicCache):
    """A DynamicCache of GrowingLayers (added one per layer on first update, as DynamicCache adds its own)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


@dataclass
class BatchState:
    """Cache and masks of a batch of rows (one row after its prefill)."""

    cache: object  # DynamicCache, or EncoderDecoderCache for encoder-decoder models
    mask: torch.Tensor  # (rows, cached tokens): 1 for real tokens, 0 for left padding
    encoder: torch.Tensor | None = None  # (rows, source tokens, hidden)
    encoder_mask: torch.Tensor | None = None  # (rows, source tokens): 0 for right padding

    @property
    def size(self) -> int:
        return self.mask.shape[0]


def self_layers(cache) -> list:
    return list(getattr(cache, "self_attention_cache", cache).layers)


def cross_layers(cache) -> list:
    inner = getattr(cache, "cross_attention_cache", None)
    return list(inner.layers) if inner is not None else []


def _pad_seq(tensor: torch.Tensor, left: int, right: int, dim: int) -> torch.Tensor:
    """Zero-pad `tensor` along `dim` (negative, counted from the end)."""
    if left == 0 and right == 0:
        return tensor
    spec = [0, 0] * (-dim - 1) + [left, right]
    return F.pad(tensor, spec)


def _stacked(tensors: list[torch.Tensor], pads: list[tuple[int, int]], room: int) -> torch.Tensor:
    """(batch, heads, positions, dim) tensors padded with zeros along positions, stacked along the batch, in one
    buffer with `room` free positions after them: one copy of each tensor."""
    first = tensors[0]
    width = first.shape[-2] + sum(pads[0])
    out = first.new_empty(sum(t.shape[0] for t in tensors), *first.shape[1:-2], width + room, first.shape[-1])
    row = 0
    for tensor, (left, right) in zip(tensors, pads):
        rows = slice(row, row + tensor.shape[0])
        out[rows, ..., left : width - right, :] = tensor
        out[rows, ..., :left, :] = 0  # padding is masked out, yet read: no stale NaN may reach the attention
        out[rows, ..., width - right : width, :] = 0
        row += tensor.shape[0]
    return out


def _merge_layers(layer_lists: list[list], pads: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor, int] | None]:
    """Per layer, every part's keys and values padded along the sequence and stacked along the batch: buffers with
    room to grow for GrowingLayers (taken as they are), and how many positions they hold."""
    merged = []
    for index in range(len(layer_lists[0])):
        layers = [parts[index] for parts in layer_lists]
        if not all(getattr(layer, "is_initialized", True) and layer.keys.numel() for layer in layers):
            merged.append(None)
            continue
        room = GrowingLayer.ROOM if isinstance(layers[0], GrowingLayer) else 0
        keys = _stacked([layer.keys for layer in layers], pads, room)
        values = _stacked([layer.values for layer in layers], pads, room)
        merged.append((keys, values, keys.shape[-2] - room))
    return merged


def _assign(layers: list, tensors: list) -> None:
    for layer, merged in zip(layers, tensors):
        if merged is None:
            continue
        keys, values, used = merged
        if isinstance(layer, GrowingLayer):
            layer.adopt(keys, values, used)
        else:
            layer.keys, layer.values = keys, values


def merge(parts: list[BatchState]) -> BatchState:
    """One state holding every row of `parts`, in order; the first part's cache object is reused."""
    if len(parts) == 1:
        return parts[0]
    longest = max(part.mask.shape[1] for part in parts)
    pads = [(longest - part.mask.shape[1], 0) for part in parts]
    merged_self = _merge_layers([self_layers(part.cache) for part in parts], pads)
    mask = torch.cat([_pad_seq(part.mask, *pad, dim=-1) for part, pad in zip(parts, pads)])
    encoder = encoder_mask = merged_cross = None
    if parts[0].encoder is not None:
        source = max(part.encoder_mask.shape[1] for part in parts)
        cross_pads = [(0, source - part.encoder_mask.shape[1]) for part in parts]
        merged_cross = _merge_layers([cross_layers(part.cache) for part in parts], cross_pads)
        encoder = torch.cat([_pad_seq(part.encoder, *pad, dim=-2) for part, pad in zip(parts, cross_pads)])
        encoder_mask = torch.cat([_pad_seq(part.encoder_mask, *pad, dim=-1) for part, pad in zip(parts, cross_pads)])
    cache = parts[0].cache
    _assign(self_layers(cache), merged_self)
    if merged_cross is not None:
        _assign(cross_layers(cache), merged_cross)
    return BatchState(cache, mask, encoder, encoder_mask)


def select(state: BatchState, keep: list[int]) -> BatchState:
    """The rows `keep` of `state`, without the padding columns none of them needs."""
    index = torch.tensor(keep, dtype=torch.long, device=state.mask.device)
    mask = state.mask.index_select(0, index)
    start = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() else 0
    for layer in self_layers(state.cache):
        if getattr(layer, "is_initialized", True) and layer.keys.numel():
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
    encoder = encoder_mask = None
    if state.encoder is not None:
        encoder_mask = state.encoder_mask.index_select(0, index)
        end = int((encoder_mask.sum(0) > 0).nonzero()[-1]) + 1
        encoder_mask = encoder_mask[:, :end]
        encoder = state.encoder.index_select(0, index)[:, :end]
        for layer in cross_layers(state.cache):
            if getattr(layer, "is_initialized", True) and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, index)[:, :, :end]
                layer.values = layer.values.index_select(0, index)[:, :, :end]
    return BatchState(state.cache, mask[:, start:], encoder, encoder_mask)


def pad_sequences(sequences: list[torch.Tensor], left: bool, value) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (length, ...) tensors padded to the longest, on the left or right; and the (rows, longest) mask."""
    longest = max(sequence.shape[0] for sequence in sequences)
    first = sequences[0]
    padded = first.new_full((len(sequences), longest, *first.shape[1:]), value)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=first.device)
    for row, sequence in enumerate(sequences):
        place = slice(longest - sequence.shape[0], longest) if left else slice(0, sequence.shape[0])
        padded[row, place] = sequence
        mask[row, place] = 1
    return padded, mask
