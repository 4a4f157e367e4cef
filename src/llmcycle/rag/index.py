"""`llmcycle rag index`: documents -> chunks -> normalised embeddings -> a FAISS index and a BM25 index.

The index folder describes itself: `manifest.json` (embedder, dimension, chunker settings, document hashes,
library versions), `chunks.jsonl` (id, document, title, source, span, text), `vectors.npy` (float32, one
normalised row a chunk), `faiss.index` (inner product, which is cosine on normalised vectors: exact up to
`--ann-threshold` chunks, HNSW or IVF beyond) and `bm25/` (bm25s's own files, no pickles). With `--store
qdrant` the vectors go to a Qdrant collection instead of `vectors.npy` and `faiss.index`.

The folder is written under a temporary name and renamed into place when complete, so a failed or interrupted
run leaves the previous index (or nothing) behind. `--update` re-embeds only documents whose text or title
changed, and keeps the vectors of the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..console import note, print_table
from ..errors import UserError
from ..outputs import write_json, write_jsonl
from .chunking import Chunk, ChunkSettings, chunk_documents
from .documents import Document, read_documents
from .embedder import Embedder, load_embedder
from .qdrant_store import write_qdrant
from .retrieve import BM25_STOPWORDS, FORMAT, FORMAT_VERSION, RagIndex

DEFAULT_EMBEDDER = "minilm"
ANN_KINDS = ("hnsw", "ivf")


@dataclass
class IndexOptions:
    """How `rag index` builds an index; the flags of the verb."""

    embedder: str = DEFAULT_EMBEDDER
    """`minilm` (the bundled all-MiniLM-L6-v2) or a sentence-transformers model folder."""
    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    ann: str = "hnsw"
    """Approximate index beyond the threshold: hnsw or ivf."""
    ann_threshold: int = 50_000
    """Up to this many chunks the FAISS index is exact (flat inner product)."""
    batch_size: int = 64
    """Chunks embedded together."""
    update: bool = False
    """Keep the vectors of unchanged documents of the existing index at --out."""
    store: str = "folder"
    """folder (FAISS in the index folder) or qdrant (vectors in a Qdrant collection)."""
    url: str | None = None
    """Qdrant server URL (http://host:6333), or a local folder for Qdrant's in-process mode."""
    collection: str | None = None
    """Qdrant collection name (default: the index folder's name)."""

    def validate(self) -> None:
        if self.ann not in ANN_KINDS:
            raise UserError(f"--ann must be one of {', '.join(ANN_KINDS)} (got {self.ann})")
        if self.ann_threshold < 0:
            raise UserError(f"--ann-threshold must be 0 or more (got {self.ann_threshold})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.store not in ("folder", "qdrant"):
            raise UserError(f"--store must be folder or qdrant (got {self.store})")
        if (self.store == "qdrant") != bool(self.url):
            raise UserError("--store qdrant needs --url (a server URL, or a folder for Qdrant's local mode), and --url goes with --store qdrant")


def build_faiss(vectors: np.ndarray, ann: str, threshold: int):
    """Exact inner-product search up to `threshold` vectors; HNSW or IVF (inner product) beyond."""
    import faiss

    count, dimension = vectors.shape
    if count <= threshold:
        index = faiss.IndexFlatIP(dimension)
    elif ann == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        nlist = max(1, int(4 * np.sqrt(count)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


def faiss_kind(count: int, options: IndexOptions) -> str:
    return "flat" if count <= options.ann_threshold else options.ann


def build_bm25(texts: list[str], folder: Path) -> None:
    """bm25s with its defaults (Lucene scoring, k1=1.5, b=0.75), English stop words; saved without pickles."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, show_progress=False), show_progress=False)
    retriever.save(str(folder), allow_pickle=False, show_progress=False)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("llmcycle", "sentence-transformers", "faiss-cpu", "bm25s", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def check_out_folder(out: Path, update: bool) -> None:
    """--out may be new, or an index (replaced, or updated with --update); anything else is left alone."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the index")
    is_index = (out / "manifest.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not is_index:
        raise UserError(f"--out {out} is a folder that holds no index (no manifest.json); give a new or empty folder")
    if update and not is_index:
        raise UserError(f"--update: {out} holds no index (no manifest.json); build one first without --update")
    parent = out.parent if out.parent != Path("") else Path(".")
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write the index {out}: {parent} is not writable")


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yields a temporary folder beside `out`; on success it replaces `out`, on failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Previous:
    """What --update keeps from the existing index: its chunks and vectors by document."""

    chunks: dict[str, list[dict]]
    vectors: dict[str, np.ndarray]
    digests: dict[str, str]


def load_previous(out: Path, embedder: Embedder, settings: ChunkSettings, store: str) -> Previous | None:
    """The old index's reusable parts, or None when its chunker settings or store differ (everything is re-embedded)."""
    old = RagIndex.open(out)
    recorded = old.manifest["embedder"]
    if recorded["name"] != embedder.name or int(recorded["dimension"]) != embedder.dimension:
        raise UserError(f"--update: {out} was built with embedder {recorded['name']} (dimension {recorded['dimension']}), "
                        f"not {embedder.name} (dimension {embedder.dimension}); update with the same --embedder or build a new index")
    if old.manifest["chunking"] != asdict(settings) or old.store_kind != store:
        note(f"--update: the chunker settings or the store changed since {out} was built; re-embedding every document")
        return None
    vectors = old.vectors() if old.store_kind == "folder" else None
    by_doc: dict[str, list[int]] = {}
    for row, chunk in enumerate(old.chunks):
        by_doc.setdefault(chunk["document"], []).append(row)
    digests = {doc_id: info["sha256"] for doc_id, info in old.manifest["documents"].items()}
    return Previous({d: [old.chunks[r] for r in rows] for d, rows in by_doc.items()},
                    {d: vectors[rows] for d, rows in by_doc.items()} if vectors is not None else {}, digests)


def _chunk_from(record: dict) -> Chunk:
    return Chunk(record["id"], record["document"], record["title"], record["source"], tuple(record["span"]), record["text"])


def plan_chunks(documents: list[Document], embedder: Embedder, settings: ChunkSettings, previous: Previous | None):
    """(all chunks in document order, indices of the chunks to embed, reused vectors by chunk index)."""
    changed = [d for d in documents if previous is None or previous.digests.get(d.id) != d.digest]
    fresh = {c.id: c for c in chunk_documents(changed, embedder.model.tokenizer, settings)}
    fresh_by_doc: dict[str, list[Chunk]] = {}
    for chunk in fresh.values():
        fresh_by_doc.setdefault(chunk.document, []).append(chunk)
    chunks, to_embed, reused = [], [], {}
    for document in documents:
        if document.id in fresh_by_doc or previous is None or document.id not in previous.chunks:
            for chunk in fresh_by_doc.get(document.id, []):
                to_embed.append(len(chunks))
                chunks.append(chunk)
            continue
        for offset, record in enumerate(previous.chunks[document.id]):
            if document.id in previous.vectors:
                reused[len(chunks)] = previous.vectors[document.id][offset]
            chunks.append(_chunk_from(record))
    return chunks, to_embed, reused


def manifest(embedder: Embedder, options: IndexOptions, documents: list[Document], chunks: list[Chunk], seconds: float) -> dict:
    counts: dict[str, int] = {}
    for chunk in chunks:
        counts[chunk.document] = counts.get(chunk.document, 0) + 1
    store = {"kind": "folder", "faiss": faiss_kind(len(chunks), options), "metric": "inner_product"}
    if options.store == "qdrant":
        store = {"kind": "qdrant", "url": options.url, "collection": options.collection}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "embedder": embedder.describe(),
        "chunking": asdict(options.chunking), "chunks": len(chunks), "store": store,
        "bm25": {"library": "bm25s", "stopwords": BM25_STOPWORDS, "folder": "bm25"},
        "documents": {d.id: {"sha256": d.digest, "title": d.title, "source": d.source, "chunks": counts.get(d.id, 0)} for d in documents},
        "versions": versions(), "index_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _vectors_for(chunks: list[Chunk], to_embed: list[int], reused: dict, embedder: Embedder, batch_size: int) -> np.ndarray:
    vectors = np.zeros((len(chunks), embedder.dimension), dtype=np.float32)
    for row, vector in reused.items():
        vectors[row] = vector
    if to_embed:
        vectors[to_embed] = embedder.encode([chunks[i].text for i in to_embed], batch_size)
    return vectors


def build_index(paths: list[str], out: str, options: IndexOptions) -> dict:
    """Build (or --update) the index folder `out` from documents; returns its manifest."""
    options.validate()
    out_path = Path(out)
    check_out_folder(out_path, options.update)
    started = time.perf_counter()
    documents = read_documents(paths)
    embedder = load_embedder(options.embedder)
    previous = load_previous(out_path, embedder, options.chunking, options.store) if options.update else None
    options.chunking.validate(embedder.token_limit)
    options.collection = options.collection or out_path.resolve().name
    chunks, to_embed, reused = plan_chunks(documents, embedder, options.chunking, previous)
    if not chunks:
        raise UserError("the documents gave no chunks to index")
    embed_started = time.perf_counter()
    vectors = _vectors_for(chunks, to_embed, reused, embedder, options.batch_size)
    embed_seconds = time.perf_counter() - embed_started
    with staged_folder(out_path) as folder:
        write_jsonl(folder / "chunks.jsonl", (c.record() for c in chunks))
        build_bm25([c.text for c in chunks], folder / "bm25")
        _write_vectors(folder, vectors, chunks, to_embed, options)
        result = manifest(embedder, options, documents, chunks, time.perf_counter() - started)
        result["embed_seconds"] = round(embed_seconds, 3)
        write_json(folder / "manifest.json", result)
    _print_summary(result, len(to_embed), time.perf_counter() - started, embed_seconds)
    return result


def _write_vectors(folder: Path, vectors: np.ndarray, chunks: list[Chunk], to_embed: list[int], options: IndexOptions) -> None:
    import faiss

    if options.store == "qdrant":
        write_qdrant(options.url, options.collection, chunks, vectors, rewrite=not options.update, changed=to_embed)
        return
    with open(folder / "vectors.npy", "wb") as handle:
        np.save(handle, vectors, allow_pickle=False)
    faiss.write_index(build_faiss(vectors, options.ann, options.ann_threshold), str(folder / "faiss.index"))


def _print_summary(result: dict, embedded: int, seconds: float, embed_seconds: float) -> None:
    store = result["store"]
    rows = [
        ("documents", len(result["documents"])), ("chunks", result["chunks"]), ("chunks embedded now", embedded),
        ("dimension", result["embedder"]["dimension"]),
        ("vector store", store.get("faiss", "") + " FAISS" if store["kind"] == "folder" else f"qdrant {store['collection']}"),
        ("seconds in all", f"{seconds:.1f}"),
    ]
    if embedded and embed_seconds > 0:
        rows.append(("chunks embedded per second of embedding", f"{embedded / embed_seconds:.1f}"))
    print_table("rag index", ["", "value"], rows)
