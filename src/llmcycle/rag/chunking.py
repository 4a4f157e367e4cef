"""Cutting documents into chunks of at most N embedder tokens, with overlap, on sentence boundaries where possible.

Why our own: the chunk size has to be measured in the embedder's own tokens (a chunk longer than the embedder
reads is silently truncated, and its tail never found), and every chunk has to keep its character span in the
document, so answers can be traced back. The text is tokenised once with offsets; a chunk ends at the last
sentence boundary (after `.`, `!` or `?`, or at a line break) that keeps it within the budget, or mid-sentence
when one sentence alone is longer; the next chunk starts at the first sentence boundary within `overlap`
tokens before the end of the last one (or exactly `overlap` tokens back when there is none).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass

from ..errors import UserError
from .documents import Document

BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")
TOKENIZE_BATCH = 256
MIN_CHUNK_TOKENS = 8


@dataclass(frozen=True)
class ChunkSettings:
    """How documents are cut; recorded in the manifest, and `--update` re-chunks everything when it changes."""

    chunk_tokens: int = 200
    """Most embedder tokens in one chunk."""
    overlap: int = 32
    """Tokens a chunk may repeat from the end of the one before it."""

    def validate(self, embedder_limit: int | None) -> None:
        if self.chunk_tokens < MIN_CHUNK_TOKENS:
            raise UserError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS} (got {self.chunk_tokens})")
        if not 0 <= self.overlap < self.chunk_tokens:
            raise UserError(f"--overlap must be at least 0 and below --chunk-tokens {self.chunk_tokens} (got {self.overlap})")
        if embedder_limit is not None and self.chunk_tokens > embedder_limit:
            raise UserError(f"--chunk-tokens {self.chunk_tokens} is more than the embedder reads ({embedder_limit} tokens); use at most {embedder_limit}")


@dataclass(frozen=True)
class Chunk:
    """A piece of one document: `span` is [start, end) in characters of the document's text."""

    id: str
    document: str
    title: str
    source: str
    span: tuple[int, int]
    text: str

    def record(self) -> dict:
        return asdict(self) | {"span": list(self.span)}


def _boundaries(text: str, starts: list[int]) -> list[int]:
    """Token indices where a sentence (or line) begins."""
    found = {bisect.bisect_left(starts, match.end()) for match in BOUNDARY.finditer(text)}
    return sorted(index for index in found if 0 < index < len(starts))


def token_ranges(starts: list[int], bounds: list[int], settings: ChunkSettings) -> list[tuple[int, int]]:
    """[a, b) token ranges covering all tokens, each at most chunk_tokens long."""
    ranges, a, n = [], 0, len(starts)
    size, overlap = settings.chunk_tokens, settings.overlap
    while a < n:
        b = min(a + size, n)
        if b < n:
            last = bisect.bisect_right(bounds, b) - 1  # the last boundary at or before the budget
            if last >= 0 and bounds[last] > a + size // 3:
                b = bounds[last]
        ranges.append((a, b))
        if b == n:
            break
        first = bisect.bisect_left(bounds, b - overlap)
        a = bounds[first] if first < len(bounds) and a < bounds[first] <= b else max(b - overlap, a + 1)
    return ranges


def chunk_documents(documents: list[Document], tokenizer, settings: ChunkSettings) -> list[Chunk]:
    """Every document's chunks, in document order; ids are `DOC#N`."""
    chunks: list[Chunk] = []
    for start in range(0, len(documents), TOKENIZE_BATCH):
        batch = documents[start : start + TOKENIZE_BATCH]
        encoded = tokenizer([d.text for d in batch], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for document, offsets in zip(batch, encoded["offset_mapping"]):
            chunks.extend(_document_chunks(document, offsets, settings))
    return chunks


def _document_chunks(document: Document, offsets: list[tuple[int, int]], settings: ChunkSettings) -> list[Chunk]:
    if not offsets:
        raise UserError(f"document '{document.id}' ({document.source}) has no text the embedder can read; remove it")
    starts = [start for start, _ in offsets]
    result = []
    for number, (a, b) in enumerate(token_ranges(starts, _boundaries(document.text, starts), settings)):
        span = (offsets[a][0], offsets[b - 1][1])
        result.append(Chunk(f"{document.id}#{number}", document.id, document.title, document.source, span,
                            document.text[span[0] : span[1]]))
    return result
