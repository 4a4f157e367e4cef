"""Retrieval-augmented generation: documents -> chunks -> index (FAISS + BM25, or Qdrant) -> retrieve -> ask / eval."""
