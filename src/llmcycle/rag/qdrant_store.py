"""Chunks and vectors in Qdrant, for corpora past one machine (`rag index --store qdrant --url URL`).

`--url` is a server (`http://host:6333`) or a local folder, which runs Qdrant's local mode: the same client
code, in-process, with no server (what the tests use). Each chunk is one point: its id is a UUID derived from
the chunk id (so re-indexing a chunk overwrites it), its payload the chunk's id, document and row. The index
folder keeps the manifest, chunks.jsonl and BM25 as usual; only the dense search goes to Qdrant.
"""

from __future__ import annotations

import atexit
import contextlib
import uuid
from pathlib import Path

import numpy as np

from ..errors import UserError
from .chunking import Chunk

UPSERT_BATCH = 512
SCROLL_BATCH = 1024
_LOCAL_CLIENTS: dict[str, object] = {}  # local mode locks its folder: one client per folder and process


@atexit.register
def _close_local_clients() -> None:
    """Close local-mode clients while the interpreter can still run their clean-up."""
    for client in _LOCAL_CLIENTS.values():
        with contextlib.suppress(Exception):
            client.close()
    _LOCAL_CLIENTS.clear()


def client_for(url: str):
    try:
        from qdrant_client import QdrantClient
    except ImportError as exc:
        raise UserError("--store qdrant needs the Qdrant client: pip install 'llmcycle[qdrant]'") from exc

    if url.startswith(("http://", "https://")):
        return QdrantClient(url=url)
    key = str(Path(url).expanduser().resolve())
    if key not in _LOCAL_CLIENTS:
        try:
            _LOCAL_CLIENTS[key] = QdrantClient(path=key)
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"--url {url}: cannot open a local Qdrant store there ({exc})") from exc
    return _LOCAL_CLIENTS[key]


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "llmcycle-chunk:" + chunk_id))


def write_qdrant(url: str, collection: str, chunks: list[Chunk], vectors: np.ndarray, rewrite: bool, changed: list[int]) -> None:
    """Write the chunks' vectors; `rewrite` recreates the collection, else only `changed` rows are upserted
    and points of chunks that no longer exist are deleted."""
    client = client_for(url)
    from qdrant_client import models

    try:
        if rewrite or not client.collection_exists(collection):
            if client.collection_exists(collection):
                client.delete_collection(collection)
            client.create_collection(collection, vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE))
            changed = list(range(len(chunks)))
        else:
            _delete_stale(client, collection, {point_id(c.id) for c in chunks})
        for start in range(0, len(changed), UPSERT_BATCH):
            rows = changed[start : start + UPSERT_BATCH]
            points = [models.PointStruct(id=point_id(chunks[r].id), vector=vectors[r].tolist(),
                                         payload={"chunk": chunks[r].id, "document": chunks[r].document, "row": r}) for r in rows]
            client.upsert(collection, points=points, wait=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"Qdrant at {url}: cannot write collection {collection} ({' '.join(str(exc).split())[:200]})") from exc


def _delete_stale(client, collection: str, keep: set[str]) -> None:
    from qdrant_client import models

    stale, offset = [], None
    while True:
        points, offset = client.scroll(collection, limit=SCROLL_BATCH, offset=offset, with_payload=False, with_vectors=False)
        stale.extend(p.id for p in points if str(p.id) not in keep)
        if offset is None:
            break
    if stale:
        client.delete(collection, points_selector=models.PointIdsList(points=stale), wait=True)


def search_qdrant(index, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Top-k (row of chunks.jsonl, score) pairs for each query vector, from the index's Qdrant collection."""
    store = index.manifest["store"]
    client = client_for(store["url"])
    rows = {c["id"]: row for row, c in enumerate(index.chunks)}
    try:
        if not client.collection_exists(store["collection"]):
            raise UserError(f"index {index.folder}: Qdrant at {store['url']} has no collection {store['collection']}; build the index again")
        results = []
        for query in queries:
            points = client.query_points(store["collection"], query=query.tolist(), limit=k, with_payload=True).points
            results.append([(rows[p.payload["chunk"]], float(p.score)) for p in points if p.payload.get("chunk") in rows])
        return results
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"Qdrant at {store['url']}: search failed ({' '.join(str(exc).split())[:200]})") from exc
