"""Preference rows for reward models and DPO: pairs, or rankings expanded into every ordered pair.

    {"prompt": ..., "chosen": ..., "rejected": ...}
    {"prompt": ..., "responses": [a, b, c], "ranking": [2, 1, 3]}     # 1 = best: b > a > c

A ranking of k responses gives every pair (better, worse): k(k-1)/2 pairs when there are no ties; tied
responses form no pair. Unusable rows name file, line and field, as everywhere. A labeler's row (`llmcycle label`
writes `labeler` and `flags` beside the ranking) that ties every response, or flags its prompt unusable, states no
preference: it gives no pair and is counted, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..console import note
from ..errors import UserError
from .io import BadRow, Row, read_rows


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    where: str


class _Unusable(Exception):
    pass


def load_pairs(source: str, *, split: str | None = None, skip_bad_rows: bool = False) -> list[Pair]:
    rows, bad = read_rows(source, split)
    pairs: list[Pair] = []
    stated = [row for row in rows if not _no_preference(row.values)]
    abstained = len(rows) - len(stated)
    for row in stated:
        try:
            pairs.extend(row_pairs(row))
        except _Unusable as exc:
            bad.append(BadRow(row.where, str(exc)))
    if bad and not skip_bad_rows:
        more = f" ({len(bad) - 1} more bad rows; --skip-bad-rows skips them)" if len(bad) > 1 else ""
        raise UserError(bad[0].message() + more)
    if not pairs:
        raise UserError(f"{source}: no usable preference pairs")
    if bad:
        note(f"skipped {len(bad)} unusable rows in {source} (first: {bad[0].message()})")
    if abstained:
        note(f"{abstained} labelers' rows in {source} give no pair (every response tied, or the prompt flagged unusable)")
    return pairs


def _no_preference(values: dict) -> bool:
    """A labeler's row that says no response is better: every one tied, or the prompt flagged unusable."""
    flags, ranking = values.get("flags"), values.get("ranking")
    if not isinstance(values.get("labeler"), str):
        return False
    if isinstance(flags, dict) and flags.get("unusable") is True:
        return True
    return isinstance(ranking, list) and len(ranking) > 1 and all(rank == ranking[0] for rank in ranking)


def _text(values: dict, name: str) -> str:
    value = values.get(name)
    if value is None:
        raise _Unusable(f"field '{name}' is missing")
    if not isinstance(value, str):
        raise _Unusable(f"field '{name}' is not a string (got {type(value).__name__})")
    if not value.strip():
        raise _Unusable(f"field '{name}' is empty")
    return value


def row_pairs(row: Row) -> list[Pair]:
    values = row.values
    prompt = _text(values, "prompt")
    if "responses" in values or "ranking" in values:
        return _ranking_pairs(prompt, values, row.where)
    if "chosen" not in values and "rejected" not in values:
        raise _Unusable(f"unknown layout (fields: {', '.join(sorted(values))}); expected prompt/chosen/rejected or prompt/responses/ranking")
    chosen, rejected = _text(values, "chosen"), _text(values, "rejected")
    if chosen.strip() == rejected.strip():
        raise _Unusable("fields 'chosen' and 'rejected' are equal; a pair needs two different responses")
    return [Pair(prompt, chosen, rejected, row.where)]


def _ranking_pairs(prompt: str, values: dict, where: str) -> list[Pair]:
    responses, ranking = values.get("responses"), values.get("ranking")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) and r.strip() for r in responses):
        raise _Unusable("field 'responses' must be a list of at least two non-empty strings")
    if not isinstance(ranking, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranking):
        raise _Unusable("field 'ranking' must be a list of ranks (whole numbers, 1 = best)")
    if len(ranking) != len(responses):
        raise _Unusable(f"field 'ranking' has {len(ranking)} ranks for {len(responses)} responses")
    pairs = [
        Pair(prompt, responses[i], responses[j], where)
        for i in range(len(responses)) for j in range(len(responses))
        if ranking[i] < ranking[j] and responses[i].strip() != responses[j].strip()
    ]
    if not pairs:
        raise _Unusable("field 'ranking' ranks every response the same; no pair to learn from")
    return pairs
