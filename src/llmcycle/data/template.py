"""Templates that turn rows with arbitrary fields into prompt/completion pairs.

A template is a small YAML file:

    prompt:            # one phrasing, or a list of several; FLAN-style, one is picked per row by seed
      - "Give a short sentence describing the following product review:\\n{review_body}"
      - "Summarise this review in one line:\\n{review_body}"
    completion: "{review_headline}"   # optional: rows without it are prompts only

`{name}` is replaced by the row's field `name`. We use `str.format` field syntax without attribute or index
access, so a template can only read top-level fields of the row.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from ..config import read_yaml
from ..errors import UserError

TEMPLATE_KEYS = {"prompt", "completion", "rationale", "name", "description"}


@dataclass(frozen=True)
class Template:
    """Instruction phrasings and a completion pattern, read from a YAML file."""

    prompts: tuple[str, ...]
    completion: str | None
    source: str
    rationale: str | None = None
    """A chain-of-thought shot's worked reasoning, from the row's fields (`prompt --cot`)."""

    def fields(self) -> set[str]:
        """Every row field some phrasing, the completion or the rationale reads."""
        patterns = [*self.prompts, *(p for p in (self.completion, self.rationale) if p)]
        return {name for pattern in patterns for name in _field_names(pattern, self.source)}

    def pick_prompt(self, row_index: int, seed: int) -> str:
        """The phrasing used for one row: fixed by (seed, row index), whatever order rows are read in."""
        if len(self.prompts) == 1:
            return self.prompts[0]
        return random.Random(seed * 1_000_003 + row_index).choice(self.prompts)


def load_template(path: str | Path) -> Template:
    path = Path(path)
    data = read_yaml(path, "template", "a mapping with 'prompt' and optionally 'completion'")
    unknown = set(data) - TEMPLATE_KEYS
    if unknown:
        raise UserError(f"template {path}: unknown key '{sorted(unknown)[0]}'; expected {sorted(TEMPLATE_KEYS)}")
    prompts = data.get("prompt")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError(f"template {path}: 'prompt' must be a non-empty string or a list of them")
    completion = data.get("completion")
    if completion is not None and not isinstance(completion, str):
        raise UserError(f"template {path}: 'completion' must be a string")
    rationale = data.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        raise UserError(f"template {path}: 'rationale' must be a string")
    template = Template(tuple(prompts), completion, str(path), rationale)
    template.fields()  # validates the placeholder syntax now rather than at the first row
    return template


def render(pattern: str, values: dict) -> str:
    """Fill `pattern` from `values`; the caller has checked that every field exists and is a scalar."""
    return pattern.format_map({name: _as_text(values[name]) for name in _field_names(pattern, "")})


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _field_names(pattern: str, source: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:
        raise UserError(f"template {source}: bad placeholder in {pattern!r} ({exc}); write {{{{ for a literal brace")
    for name in names:
        if not name.isidentifier():
            raise UserError(f"template {source}: placeholder {{{name}}} must be a plain field name")
    return names
