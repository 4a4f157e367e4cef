"""Who ranks what: labelers and their tokens, each labeler's queue, and turning a submission into a row.

Item i goes to `overlap` labelers, starting at labeler i mod L and taking the next ones in the labelers file's
order, so every labeler gets about the same share and every item is ranked `overlap` times. A labeler's queue keeps
the items' order; their next item is the first one they have not ranked, so a reload (or a restart) continues
there. Each labeler sees an item's responses in an order of their own, shuffled by a hash of (seed, item,
labeler): the same on every reload, never the source order, and never naming who wrote what.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from .completions import Item
from .store import RankingStore

ANONYMOUS = "anonymous"
"""The one labeler of a page started without --labelers."""


@dataclass(frozen=True)
class Labeler:
    name: str
    token: str | None = field(repr=False)


class BadSubmission(ValueError):
    """A request body that cannot be taken, naming the field at fault (answered with 400)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def read_labelers(path: str) -> list[Labeler]:
    """`name token` a line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read labelers file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    labelers: list[Labeler] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        labelers.append(_labeler_line(line, f"{path} line {number}", labelers))
    if not labelers:
        raise UserError(f"{path}: no labelers; write one 'name token' a line")
    return labelers


def _labeler_line(line: str, where: str, earlier: list[Labeler]) -> Labeler:
    parts = line.split()
    if len(parts) != 2:
        raise UserError(f"{where}: expected 'name token' (two words), got {len(parts)}")
    name, token = parts
    if any(labeler.name == name for labeler in earlier):
        raise UserError(f"{where}: labeler name '{name}' is given twice")
    if any(hmac.compare_digest(labeler.token, token) for labeler in earlier):
        raise UserError(f"{where}: this token is given to another labeler too; each labeler needs their own")
    return Labeler(name, token)


def assign(items: list[Item], labelers: list[Labeler], overlap: int) -> dict[str, list[Item]]:
    """Each labeler's queue: item i goes to labelers i, i+1, ..., i+overlap-1 (mod the number of labelers)."""
    if not 1 <= overlap <= len(labelers):
        raise UserError(f"--overlap {overlap} needs between 1 and {len(labelers)} (the number of labelers)")
    queues: dict[str, list[Item]] = {labeler.name: [] for labeler in labelers}
    for index, item in enumerate(items):
        for offset in range(overlap):
            queues[labelers[(index + offset) % len(labelers)].name].append(item)
    return queues


def shown_order(seed: int, item: str, labeler: str, k: int) -> list[int]:
    """The source index of each response in the order this labeler sees them."""
    key = hashlib.sha256(f"{seed}\0{item}\0{labeler}".encode()).digest()
    order = list(range(k))
    random.Random(int.from_bytes(key[:8], "big")).shuffle(order)
    return order


def check_ranking(ranking: object, k: int) -> list[int]:
    """Standard competition ranks, 1 = best, one per response in the order shown: [2, 1, 3], or [1, 1, 3] for a tie."""
    if not isinstance(ranking, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking):
        raise BadSubmission("ranking", "must be a list of whole numbers (1 = best), one per response")
    if len(ranking) != k:
        raise BadSubmission("ranking", f"has {len(ranking)} ranks for {k} responses")
    for rank in ranking:
        if rank != 1 + sum(other < rank for other in ranking):
            raise BadSubmission("ranking", f"{ranking} is not a ranking of {k} responses: each rank must be 1 plus the "
                                           "number of responses ranked better (a permutation of 1..K, ties as [1, 1, 3])")
    return ranking


def check_flags(flags: object, k: int) -> dict:
    """`{"unsafe": [K booleans, in the order shown], "unusable": bool (the prompt)}`, both optional; `unsafe` may
    also list the positions (0-based, in the order shown) of the responses flagged."""
    if flags is None:
        flags = {}
    if not isinstance(flags, dict):
        raise BadSubmission("flags", "must be an object such as {\"unsafe\": [false, true, ...], \"unusable\": false}")
    unknown = sorted(set(flags) - {"unsafe", "unusable"})
    if unknown:
        raise BadSubmission(f"flags.{unknown[0]}", "unknown flag; the flags are 'unsafe' and 'unusable'")
    unsafe = _unsafe_marks(flags.get("unsafe", []), k)
    unusable = flags.get("unusable", False)
    if not isinstance(unusable, bool):
        raise BadSubmission("flags.unusable", "must be true or false")
    return {"unsafe": unsafe, "unusable": unusable}


class Queues:
    """The labelers' queues over one rankings store."""

    def __init__(self, items: list[Item], labelers: list[Labeler], overlap: int, store: RankingStore, seed: int = 0):
        self.items = {item.id: item for item in items}
        self.labelers = labelers
        self.queues = assign(items, labelers, overlap)
        self.queue_ids = {name: {item.id for item in queue} for name, queue in self.queues.items()}
        self.store, self.seed = store, seed
        self.requires_token = any(labeler.token is not None for labeler in labelers)
        self._served_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Labeler | None:
        """The labeler whose token the `Authorization: Bearer TOKEN` header carries; the one labeler when no tokens
        are required; else None."""
        if not self.requires_token:
            return self.labelers[0]
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        matches = [labeler for labeler in self.labelers if hmac.compare_digest(labeler.token.encode(), token.strip().encode())]
        return matches[0] if matches else None

    def next_item(self, labeler: Labeler) -> dict | None:
        """`{"item", "prompt", "responses"}` of the labeler's first unranked item, responses in their order; None when done."""
        for item in self.queues[labeler.name]:
            if not self.store.done(item.id, labeler.name):
                with self._lock:
                    self._served_at.setdefault((item.id, labeler.name), time.monotonic())
                order = shown_order(self.seed, item.id, labeler.name, item.k)
                return {"item": item.id, "prompt": item.prompt, "responses": [item.responses[i] for i in order]}
        return None

    def all_done(self) -> bool:
        """Every labeler has ranked every item of their queue."""
        return all(self.store.done(item.id, name) for name, queue in self.queues.items() for item in queue)

    def progress(self, labeler: Labeler) -> dict:
        queue = self.queues[labeler.name]
        done = sum(self.store.done(item.id, labeler.name) for item in queue)
        return {"done": done, "left": len(queue) - done, "total": len(queue)}

    def submit(self, labeler: Labeler, body: object) -> tuple[dict, bool]:
        """Check a `POST /api/rank` body and append its row; returns (the row on disk, whether it is new)."""
        if not isinstance(body, dict):
            raise BadSubmission("body", "must be a JSON object {\"item\": ID, \"ranking\": [...], \"flags\": {...}}")
        item_id = body.get("item")
        if not isinstance(item_id, str) or item_id not in self.items:
            raise BadSubmission("item", f"unknown item {item_id!r}")
        item = self.items[item_id]
        if item_id not in self.queue_ids[labeler.name]:
            raise BadSubmission("item", f"item {item_id} is not in {labeler.name}'s queue")
        ranking = check_ranking(body.get("ranking"), item.k)
        flags = check_flags(body.get("flags"), item.k)
        return self.store.append(self._row(item, labeler, ranking, flags))

    def _row(self, item: Item, labeler: Labeler, ranking: list[int], flags: dict) -> dict:
        """The row as `llmcycle reward` reads it (prompt, responses, ranking), with what else was seen kept beside."""
        order = shown_order(self.seed, item.id, labeler.name, item.k)
        with self._lock:
            served = self._served_at.get((item.id, labeler.name))
        return {
            "prompt": item.prompt,
            "responses": [item.responses[i] for i in order],
            "ranking": ranking,
            "labeler": labeler.name,
            "item": item.id,
            "flags": flags,
            "sources": [item.sources[i] for i in order],
            "order": order,
            "seconds": round(time.monotonic() - served, 3) if served is not None else None,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _unsafe_marks(unsafe: object, k: int) -> list[bool]:
    """K booleans from K booleans, or from the 0-based positions of the flagged responses."""
    if isinstance(unsafe, list) and len(unsafe) == k and all(isinstance(u, bool) for u in unsafe):
        return unsafe
    if isinstance(unsafe, list) and all(type(u) is int and 0 <= u < k for u in unsafe) and len(set(unsafe)) == len(unsafe):
        return [position in unsafe for position in range(k)]
    raise BadSubmission("flags.unsafe", f"must be {k} true/false values, one per response in the order shown, or the "
                                        f"positions (0 to {k - 1}) of the responses flagged")
