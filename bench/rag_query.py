"""RAG query latency: p50 and p95 per question for dense, BM25 and hybrid retrieval at 10k and 100k chunks.

Chunk texts are real (`synth --task docs-qa` pages of many products, cut into 64-token chunks); the vectors
are random unit vectors of the embedder's dimension, written through llmcycle's own index builders, because
embedding 100k chunks takes about an hour on this 2-core CPU and the search cost does not depend on what the
vectors mean (for HNSW random vectors are the harder case, so its figures are if anything pessimistic). The
question embedding is real: dense and hybrid latencies include encoding the question with MiniLM. Each
question is retrieved alone (`RagIndex.search([question], k)`), as `rag ask` does, after a warm-up.
At 10k chunks FAISS is exact (flat); at 100k, past the default --ann-threshold of 50k, it is HNSW.

Run: `PYTHONPATH=src python bench/rag_query.py [--sizes 10000,100000 --questions 200 --k 5]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def chunk_texts(count: int, chunk_tokens: int) -> tuple[list, list[str]]:
    """At least `count` real chunks (first `count` kept) and questions about them."""
    from llmcycle.data.synthetic_docs import docs_qa
    from llmcycle.rag.chunking import ChunkSettings, chunk_documents
    from llmcycle.rag.documents import Document
    from llmcycle.rag.index import load_embedder

    tokenizer = load_embedder("minilm").model.tokenizer
    chunks, questions, seed = [], [], 0
    while len(chunks) < count:
        pages, qa = docs_qa(800, 5000 + seed)
        documents = [Document(f"p{seed}/{p['id']}", p["text"], p["title"], p["source"]) for p in pages]
        chunks += chunk_documents(documents, tokenizer, ChunkSettings(chunk_tokens, 8))
        questions += [q["question"] for q in qa[:20]]
        seed += 1
    return chunks[:count], questions


def write_index(folder: Path, chunks: list, dimension: int) -> None:
    from llmcycle.outputs import write_json, write_jsonl
    from llmcycle.rag.chunking import ChunkSettings
    from llmcycle.rag.index import FORMAT, IndexOptions, build_bm25, build_faiss, faiss_kind, load_embedder

    import faiss

    folder.mkdir(parents=True)
    vectors = np.random.default_rng(0).standard_normal((len(chunks), dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    options = IndexOptions()
    write_jsonl(folder / "chunks.jsonl", (c.record() for c in chunks))
    build_bm25([c.text for c in chunks], folder / "bm25")
    faiss.write_index(build_faiss(vectors, options.ann, options.ann_threshold), str(folder / "faiss.index"))
    np.save(folder / "vectors.npy", vectors)
    embedder = load_embedder("minilm")
    write_json(folder / "manifest.json", {
        "format": FORMAT, "embedder": embedder.describe(), "chunking": vars(ChunkSettings(64, 8)), "chunks": len(chunks),
        "store": {"kind": "folder", "faiss": faiss_kind(len(chunks), options)}, "documents": {}, "bm25": {"folder": "bm25"}})


def latencies(folder: Path, questions: list[str], k: int) -> dict:
    from llmcycle.rag.retrieve import RagIndex

    index = RagIndex.open(folder)
    result = {"faiss": index.manifest["store"]["faiss"]}
    for retriever in ("dense", "bm25", "hybrid"):
        index.warm(retriever)
        index.search(questions[:5], k, retriever)
        times = []
        for question in questions:
            started = time.perf_counter()
            index.search([question], k, retriever)
            times.append(1000 * (time.perf_counter() - started))
        result[retriever] = _percentiles(times)
    encode, search = [], []  # dense split into its two parts: embedding the question, and the FAISS search
    for question in questions:
        started = time.perf_counter()
        vector = index.embedder.encode([question], batch_size=1)
        encoded = time.perf_counter()
        index.faiss.search(vector, k)
        encode.append(1000 * (encoded - started))
        search.append(1000 * (time.perf_counter() - encoded))
    result["dense_question_encoding"], result["dense_faiss_search"] = _percentiles(encode), _percentiles(search)
    return result


def _percentiles(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    chunks, questions = chunk_texts(max(sizes), 64)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            started = time.perf_counter()
            write_index(Path(tmp) / str(size), chunks[:size], 384)
            built = time.perf_counter() - started
            results[size] = latencies(Path(tmp) / str(size), questions[: args.questions], args.k) | {"build_s_without_embedding": round(built, 1)}
            print(json.dumps({size: results[size]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
