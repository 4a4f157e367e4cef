"""The sentence-transformers model that embeds chunks and questions: the bundled MiniLM or a model folder.

Index building (index.py) and retrieval (retrieve.py) load it the same way; torch and sentence-transformers are
imported when a model is loaded, so `rag --help` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import progress
from ..errors import UserError

ENCODE_BLOCK_BATCHES = 32  # batches handed to one encode call, so the progress bar moves


@dataclass
class Embedder:
    """A sentence-transformers model and what the manifest records about it."""

    name: str
    path: str
    model: object

    @property
    def dimension(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def token_limit(self) -> int | None:
        """Content tokens the embedder reads (its limit less the [CLS]/[SEP]-style tokens it adds)."""
        limit = getattr(self.model, "max_seq_length", None)
        if not isinstance(limit, int) or limit <= 0:
            return None
        return max(1, limit - self.model.tokenizer.num_special_tokens_to_add(pair=False))

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "dimension": self.dimension, "max_seq_length": self.model.max_seq_length, "normalized": True}

    def encode(self, texts: list[str], batch_size: int, description: str = "embedding") -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised; longest texts first, as one `encode` call would batch them."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        block = batch_size * ENCODE_BLOCK_BATCHES
        with progress() as bar:
            task = bar.add_task(description, total=len(texts))
            for start in range(0, len(order), block):
                indices = order[start : start + block]
                vectors[indices] = self.model.encode([texts[i] for i in indices], batch_size=batch_size, normalize_embeddings=True,
                                                     convert_to_numpy=True, show_progress_bar=False)
                bar.advance(task, len(indices))
        return vectors


def embedder_path(spec: str) -> str:
    """The folder of `--embedder`: the bundled MiniLM by name, or a sentence-transformers model folder."""
    from ..models import bundled_models

    bundled = bundled_models()
    if spec in bundled and not Path(spec).exists():
        return str(bundled[spec])
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(f"--embedder {spec}: not a folder and not a bundled embedder; give a sentence-transformers model folder or 'minilm'")
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise UserError(f"--embedder {spec}: no modules.json or config.json; give a sentence-transformers model folder")
    return str(path)


def load_embedder(spec: str, device: str | None = None) -> Embedder:
    from sentence_transformers import SentenceTransformer

    from ..models import pick_device

    path = embedder_path(spec)
    try:
        model = SentenceTransformer(path, device=device or str(pick_device()), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load embedder {spec} from {path}: {' '.join(str(exc).split())[:200]}") from exc
    return Embedder(spec, path, model)
