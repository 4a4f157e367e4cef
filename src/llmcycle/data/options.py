"""Where rows come from and how they become prompts: the data flags every verb that reads rows shares."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..models import LoadedModel, chat_renderer
from .formats import LoadedData, load_examples
from .template import load_template


@dataclass
class DataOptions:
    """Where rows come from and how they become prompts."""

    data: str
    """A .jsonl/.json/.csv/.parquet file or a hub dataset id."""
    split: str | None = None
    """Split of a hub dataset (default train)."""
    template: str | None = None
    """YAML template mapping the rows' fields to prompt and completion."""
    skip_bad_rows: bool = False
    """Skip unusable rows (and report how many) instead of stopping at the first."""
    limit: int | None = None
    """Use only the first N usable rows."""

    def load(self, loaded: LoadedModel | None, seed: int, require_completion: bool = False) -> LoadedData:
        template = load_template(self.template) if self.template else None
        chat = chat_renderer(loaded.tokenizer) if loaded is not None else None
        data = load_examples(
            self.data, split=self.split, template=template, chat=chat, seed=seed,
            require_completion=require_completion, skip_bad_rows=self.skip_bad_rows,
        )
        if self.limit is not None:
            if self.limit < 1:
                raise UserError("--limit must be at least 1")
            data.examples = data.examples[: self.limit]
        return data
