"""Opening an index folder and retrieving chunks for questions: dense (FAISS or Qdrant), BM25, or hybrid.

Hybrid is reciprocal rank fusion (Cormack et al. 2009): each chunk scores sum(1 / (60 + rank)) over the dense
and BM25 rankings (ranks from 1, each list `HYBRID_DEPTH` deep or k, whichever is larger), so neither
retriever's score scale matters. Ties are broken by the dense rank, then the chunk's position in the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import UserError
from .embedder import Embedder, load_embedder
from .qdrant_store import search_qdrant

FORMAT = "llmcycle-rag-index"  # what index.py writes into manifest.json, and what is read back here
FORMAT_VERSION = 1
BM25_STOPWORDS = "en"
RETRIEVERS = ("dense", "bm25", "hybrid")
RRF_CONSTANT = 60
HYBRID_DEPTH = 50
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
REQUIRED_MANIFEST = ("format", "embedder", "chunking", "chunks", "store", "documents")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: its row in chunks.jsonl and its score under the retriever that found it."""

    row: int
    score: float


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise UserError(f"index {folder} does not exist; build it with `llmcycle rag index DOCS --out {folder}`")
    if not path.is_file():
        raise UserError(f"index {folder} has no manifest.json; it is not an index (or was not completed): build it again")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"index {path} is corrupt ({exc}); build the index again") from exc
    missing = [key for key in REQUIRED_MANIFEST if not isinstance(manifest, dict) or key not in manifest]
    if missing or manifest.get("format") != FORMAT:
        raise UserError(f"index {path} is not an llmcycle RAG manifest (missing {', '.join(missing) or 'format'}); build the index again")
    return manifest


def _read_chunks(folder: Path, expected: int) -> list[dict]:
    path = folder / "chunks.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        chunks = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"index {path} is missing or corrupt ({exc}); build the index again") from exc
    if len(chunks) != expected or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in chunks):
        raise UserError(f"index {path} holds {len(chunks)} chunks, the manifest says {expected}; build the index again")
    return chunks


class RagIndex:
    """An index folder opened for reading; FAISS, BM25 and the embedder load on first use."""

    def __init__(self, folder: Path, manifest: dict, chunks: list[dict]):
        self.folder, self.manifest, self.chunks = folder, manifest, chunks
        self._embedder: Embedder | None = None

    @classmethod
    def open(cls, folder: str | Path) -> "RagIndex":
        folder = Path(folder)
        manifest = _read_manifest(folder)
        return cls(folder, manifest, _read_chunks(folder, int(manifest["chunks"])))

    @property
    def store_kind(self) -> str:
        return self.manifest["store"].get("kind", "folder")

    @property
    def dimension(self) -> int:
        return int(self.manifest["embedder"]["dimension"])

    def vectors(self) -> np.ndarray:
        path = self.folder / "vectors.npy"
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"index {path} is missing or corrupt ({exc}); build the index again") from exc
        if vectors.shape != (len(self.chunks), self.dimension):
            raise UserError(f"index {path} has shape {vectors.shape}, expected ({len(self.chunks)}, {self.dimension}); build the index again")
        return vectors

    @cached_property
    def faiss(self):
        import faiss

        path = self.folder / "faiss.index"
        if not path.is_file():
            raise UserError(f"index {path} is missing; build the index again")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise UserError(f"index {path} is corrupt; build the index again") from exc
        if index.d != self.dimension or index.ntotal != len(self.chunks):
            raise UserError(f"index {path} holds {index.ntotal} vectors of dimension {index.d}; the manifest says "
                            f"{len(self.chunks)} of dimension {self.dimension}; build the index again")
        _tune(index)
        return index

    @cached_property
    def bm25(self):
        import bm25s

        folder = self.folder / self.manifest.get("bm25", {}).get("folder", "bm25")
        try:
            retriever = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise UserError(f"index {folder} (BM25) is missing or corrupt ({exc}); build the index again") from exc
        return retriever

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._load_embedder()
        return self._embedder

    def _load_embedder(self) -> Embedder:
        recorded = self.manifest["embedder"]
        spec = recorded["path"] if Path(recorded["path"]).is_dir() else recorded["name"]
        embedder = load_embedder(spec)
        if embedder.dimension != self.dimension:
            raise UserError(f"index {self.folder} holds vectors of dimension {self.dimension} but its embedder {spec} "
                            f"gives {embedder.dimension}; rebuild the index with this embedder")
        return embedder

    def warm(self, retriever: str) -> None:
        """Load what `retriever` needs now, so that timing a search measures the search alone."""
        if retriever in ("dense", "hybrid"):
            _ = self.embedder if self.store_kind == "qdrant" else (self.embedder, self.faiss)
        if retriever in ("bm25", "hybrid"):
            _ = self.bm25

    def search(self, questions: list[str], k: int, retriever: str) -> list[list[Hit]]:
        """The top `k` chunks for each question, best first."""
        check_retriever(retriever, k)
        if retriever == "dense":
            return self.dense(questions, k)
        if retriever == "bm25":
            return self.bm25_search(questions, k)
        depth = max(k, HYBRID_DEPTH)
        return [fuse(d, b, k) for d, b in zip(self.dense(questions, depth), self.bm25_search(questions, depth))]

    def dense(self, questions: list[str], k: int) -> list[list[Hit]]:
        queries = self.embedder.encode(questions, batch_size=64, description="embedding questions")
        k = min(k, len(self.chunks))
        if self.store_kind == "qdrant":
            return [[Hit(row, score) for row, score in hits] for hits in search_qdrant(self, queries, k)]
        scores, rows = self.faiss.search(queries, k)  # (questions, k) each
        return [[Hit(int(r), float(s)) for r, s in zip(row_ids, row_scores) if r >= 0] for row_ids, row_scores in zip(rows, scores)]

    def bm25_search(self, questions: list[str], k: int) -> list[list[Hit]]:
        import bm25s

        k = min(k, len(self.chunks))
        tokens = bm25s.tokenize(questions, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False)
        results = []
        for query in tokens:
            known = [token for token in query if token in self.bm25.vocab_dict]
            if not known:  # nothing in the query occurs in the corpus: no BM25 evidence for any chunk
                results.append([])
                continue
            rows, scores = self.bm25.retrieve([known], k=k, show_progress=False, n_threads=1)
            results.append([Hit(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if s > 0])
        return results


def _tune(index) -> None:
    """Search-time settings of the approximate indexes (recall close to exact at this corpus size)."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    if hasattr(index, "nprobe"):
        index.nprobe = IVF_NPROBE


def fuse(dense: list[Hit], bm25: list[Hit], k: int) -> list[Hit]:
    """Reciprocal rank fusion of two rankings; the top k."""
    scores: dict[int, float] = {}
    dense_rank = {hit.row: rank for rank, hit in enumerate(dense, start=1)}
    for ranking in (dense, bm25):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.row] = scores.get(hit.row, 0.0) + 1.0 / (RRF_CONSTANT + rank)
    order = sorted(scores, key=lambda row: (-scores[row], dense_rank.get(row, len(dense) + 1), row))
    return [Hit(row, scores[row]) for row in order[:k]]


def check_retriever(retriever: str, k: int) -> None:
    if retriever not in RETRIEVERS:
        raise UserError(f"--retriever must be one of {', '.join(RETRIEVERS)} (got {retriever})")
    if k < 1:
        raise UserError(f"--k must be at least 1 (got {k})")
