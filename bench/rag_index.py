"""RAG indexing throughput: `llmcycle rag index` against calling sentence-transformers' `encode` directly.

The embedder is the cost of indexing, so llmcycle's whole index build (reading, chunking by embedder tokens,
embedding, FAISS, BM25, writing the folder) should run at least 0.9x the chunks per second of a bare
`SentenceTransformer.encode(chunks, batch_size=B, normalize_embeddings=True)` on the same chunks and batch
size. Documents are `synth --task docs-qa` pages of several products; the chunks the index wrote are the ones
the direct call embeds. Two ratios: the whole `build_index` call (reading, chunking, loading the embedder,
embedding, FAISS, BM25, writing) against loading the model and calling `encode`, as a user's script would; and
llmcycle's embedding step alone against `encode` alone, each on a freshly loaded model.
Each side runs `--repeat` times, interleaved, and the fastest run counts; the direct vectors are compared with the index's.

Run: `PYTHONPATH=src python bench/rag_index.py [--products 6 --components 40 --chunk-tokens 64 --batch-size 64]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_docs(folder: Path, products: int, components: int) -> Path:
    from llmcycle.data.synthetic_docs import docs_qa
    from llmcycle.outputs import write_jsonl

    pages = []
    for seed in range(products):
        for page in docs_qa(components * 8, 1000 + seed)[0]:
            pages.append(page | {"id": f"p{seed}/{page['id']}"})
    path = folder / "docs.jsonl"
    write_jsonl(path, pages)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=6)
    parser.add_argument("--components", type=int, default=40)
    parser.add_argument("--chunk-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    from llmcycle.models import bundled_models
    from llmcycle.rag.chunking import ChunkSettings
    from llmcycle.rag.index import IndexOptions, build_index

    with tempfile.TemporaryDirectory() as tmp:
        docs = write_docs(Path(tmp), args.products, args.components)
        options = IndexOptions(chunking=ChunkSettings(args.chunk_tokens, 8), batch_size=args.batch_size)
        build_index([str(docs)], f"{tmp}/idx", options)  # warm-up: file cache, first-call costs
        chunks = [json.loads(line)["text"] for line in Path(f"{tmp}/idx/chunks.jsonl").read_text().splitlines()]
        ours, embedding, theirs, theirs_encode = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits both sides alike
            started = time.perf_counter()
            manifest = build_index([str(docs)], f"{tmp}/idx", options)
            ours.append(time.perf_counter() - started)
            embedding.append(manifest["embed_seconds"])
            started = time.perf_counter()
            model = SentenceTransformer(str(bundled_models()["minilm"]), device="cpu")
            loaded = time.perf_counter()
            vectors = model.encode(chunks, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            theirs.append(time.perf_counter() - started)
            theirs_encode.append(time.perf_counter() - loaded)
        difference = float(np.abs(np.load(f"{tmp}/idx/vectors.npy") - vectors).max())
    timings = {"ours": ours, "embedding": embedding, "theirs": theirs, "theirs_encode": theirs_encode}
    rates = {name: len(chunks) / min(times) for name, times in timings.items()}
    print(json.dumps({"chunks": len(chunks), "batch_size": args.batch_size, "chunk_tokens": args.chunk_tokens,
                      "llmcycle_index_chunks_per_s": round(rates["ours"], 1), "llmcycle_embedding_chunks_per_s": round(rates["embedding"], 1),
                      "load_and_encode_chunks_per_s": round(rates["theirs"], 1), "encode_chunks_per_s": round(rates["theirs_encode"], 1),
                      "ratio_whole_index_vs_load_and_encode": round(rates["ours"] / rates["theirs"], 3),
                      "ratio_embedding_vs_encode": round(rates["embedding"] / rates["theirs_encode"], 3),
                      "max_vector_difference": difference, "seconds": {k: [round(t, 2) for t in v] for k, v in timings.items()}}, indent=2))


if __name__ == "__main__":
    main()
