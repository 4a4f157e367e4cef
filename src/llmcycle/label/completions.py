"""The items labelers rank: a prompt and K distinct, non-empty completions, made up front.

Completions come from a completions file (rows of `prompt` + `responses`, optionally `sources`), or are sampled
(seeded) from one model, or spread over the base model and named adapters so labelers compare variants: slot j of
every prompt comes from source j mod (number of sources). A slot that comes back empty or repeats an earlier slot of
its prompt is sampled again, with the next seed, up to `RESAMPLE_ROUNDS` times; a prompt that still lacks K distinct
completions is skipped and named.

Generated items are kept beside the rankings file (`ITEMS_SUFFIX`), with the settings that made them, so a restart
shows the same items without loading the model, and a restart with other settings is refused instead of mixing
rankings of different completions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..console import note
from ..data.io import BadRow, Row, read_rows
from ..errors import UserError
from ..generate.settings import GenerationSettings
from ..outputs import write_jsonl

MAX_K = 9
"""Most completions per prompt: the page ranks them with the keys 1..9."""
RESAMPLE_ROUNDS = 4
"""How many times empty or repeated completions are sampled again before their prompt is skipped."""
ITEMS_SUFFIX = ".items.jsonl"
FILE_SOURCE = "file"
"""The source of completions read from a file that names none."""


@dataclass(frozen=True)
class Item:
    """One prompt and its completions, in source order (labelers see them shuffled)."""

    id: str
    prompt: str
    responses: tuple[str, ...]
    sources: tuple[str, ...]
    """Who wrote each response: the model, 'base' or an adapter's name, or the completions file's `sources`."""
    where: str

    @property
    def k(self) -> int:
        return len(self.responses)


def item_id(prompt: str, responses: list[str] | tuple[str, ...]) -> str:
    """A content hash: the same prompt and completions keep their id across restarts, other ones get another."""
    digest = hashlib.sha256(json.dumps([prompt, list(responses)], ensure_ascii=False).encode("utf-8")).hexdigest()
    return digest[:16]


def make_item(prompt: str, responses: list[str], sources: list[str], where: str) -> Item:
    return Item(item_id(prompt, responses), prompt, tuple(responses), tuple(sources), where)


def items_path(out: str | Path) -> Path:
    """Where generated items are kept: rankings.jsonl -> rankings.items.jsonl."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(out.suffix) + ITEMS_SUFFIX)


# ---------------------------------------------------------------- a completions file


def read_completions(path: str, k: int | None) -> list[Item]:
    """Items from rows of `prompt` + `responses` (+ `sources`); a bad row is an error naming its line and field."""
    rows, bad = read_rows(path)
    items: dict[str, Item] = {}
    for row in rows:
        try:
            item = _completions_item(row, k)
        except ValueError as exc:
            bad.append(BadRow(row.where, str(exc)))
            continue
        if item.id in items:
            bad.append(BadRow(row.where, f"the same prompt and responses as {items[item.id].where}"))
        items.setdefault(item.id, item)
    if bad:
        raise UserError(bad[0].message() + (f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""))
    return list(items.values())


def _completions_item(row: Row, k: int | None) -> Item:
    values = row.values
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("field 'prompt' must be a non-empty string")
    responses = values.get("responses")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) and r.strip() for r in responses):
        raise ValueError("field 'responses' must be a list of at least two non-empty strings")
    if len(responses) > MAX_K:
        raise ValueError(f"field 'responses' holds {len(responses)} responses; the page ranks at most {MAX_K} (keys 1..{MAX_K})")
    if k is not None and len(responses) != k:
        raise ValueError(f"field 'responses' holds {len(responses)} responses; --k is {k}")
    if len({r.strip() for r in responses}) < len(responses):
        raise ValueError("field 'responses' repeats a response; a labeler can only rank distinct ones")
    sources = values.get("sources", [FILE_SOURCE] * len(responses))
    if not isinstance(sources, list) or len(sources) != len(responses) or not all(isinstance(s, str) for s in sources):
        raise ValueError("field 'sources' must be a list of strings, one per response")
    return make_item(prompt, responses, sources, row.where)


# ---------------------------------------------------------------- sampled from models


@dataclass(frozen=True)
class GenerationRequest:
    """What generated items depend on; a restart with the same request reuses them."""

    model: str
    adapters: tuple[tuple[str, str], ...]
    prompts: str
    prompts_sha256: str
    k: int
    settings: GenerationSettings
    dtype: str = "auto"
    trust_remote_code: bool = False

    def fingerprint(self) -> dict:
        return json.loads(json.dumps({**asdict(self), "settings": asdict(self.settings)}))

    @property
    def sources(self) -> list[str]:
        """One model: its name; adapters: 'base' and each adapter's name, slot j from source j mod their count."""
        return ["base", *(name for name, _ in self.adapters)] if self.adapters else [self.model]


def file_sha256(source: str) -> str:
    """The bytes of a local prompts file (a hub dataset id stands for itself)."""
    path = Path(source)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else source


def reuse_items(path: Path, request: GenerationRequest) -> list[Item] | None:
    """The items kept from an earlier start with the same request; None when there are none."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: not an items file llmcycle label wrote; delete it to sample again") from exc
    if header.get("request") != request.fingerprint():
        changed = sorted(key for key, value in request.fingerprint().items() if header.get("request", {}).get(key) != value)
        raise UserError(f"{path} holds completions made with other settings ({', '.join(changed)} differ); give another "
                        "--out, or delete it and the rankings file to start over")
    note(f"reusing the {len(records)} items sampled before ({path})")
    _note_skipped(header.get("skipped", []), request.k)
    return [make_item(r["prompt"], r["responses"], r["sources"], r["where"]) for r in records]


def save_items(path: Path, request: GenerationRequest, items: list[Item], skipped: list[str]) -> None:
    """The request and the prompts skipped on the first line, then one item a line."""
    records = [{"request": request.fingerprint(), "skipped": skipped}]
    records += [{"item": i.id, "prompt": i.prompt, "responses": list(i.responses), "sources": list(i.sources), "where": i.where}
                for i in items]
    write_jsonl(path, records)


def sample_items(loaded, examples: list, request: GenerationRequest) -> tuple[list[Item], list[str]]:
    """K distinct, non-empty completions per example, from the request's sources; returns the items and where the
    prompts that failed (skipped) are."""
    sources = request.sources
    slot_source = [sources[slot % len(sources)] for slot in range(request.k)]
    texts: list[list[str | None]] = [[None] * request.k for _ in examples]
    for round_ in range(RESAMPLE_ROUNDS + 1):  # round 0 samples every slot, the later ones only what failed
        wanted = _slots_to_fill(texts)
        if not wanted:
            break
        _fill(loaded, examples, texts, wanted, slot_source, request, round_)
    else:
        _slots_to_fill(texts)  # the last round's samples are checked too; what still fails stays None
    items, failed = [], []
    for example, completions in zip(examples, texts):
        if any(text is None for text in completions):
            failed.append(example.where)
        else:
            items.append(make_item(example.prompt, completions, slot_source, example.where))
    _note_skipped(failed, request.k)
    return _unique(items), failed


def _note_skipped(failed: list[str], k: int) -> None:
    if failed:
        note(f"skipped {len(failed)} prompts without {k} distinct non-empty completions after "
             f"{RESAMPLE_ROUNDS} resamples: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}")


def _slots_to_fill(texts: list[list[str | None]]) -> list[tuple[int, int]]:
    """(example, slot) pairs still empty, or repeating an earlier slot of their prompt; clears them to None."""
    wanted = []
    for example, completions in enumerate(texts):
        seen = set()
        for slot, text in enumerate(completions):
            if text is None or not text.strip() or text.strip() in seen:
                completions[slot] = None
                wanted.append((example, slot))
            else:
                seen.add(text.strip())
    return wanted


def _fill(loaded, examples, texts, wanted, slot_source, request: GenerationRequest, round_: int) -> None:
    """Sample the wanted slots, grouped by source (one engine call each), with this round's seed."""
    from ..generate.engine import generate
    from ..models import use_adapter

    settings = request.settings
    round_settings = GenerationSettings(**{**asdict(settings), "do_sample": True, "seed": settings.seed + round_})
    for source in dict.fromkeys(slot_source[slot] for _, slot in wanted):
        slots = [(example, slot) for example, slot in wanted if slot_source[slot] == source]
        if request.adapters:  # spread over base and named adapters; a run folder's own adapter stays on
            use_adapter(loaded, source)
        outputs = generate(loaded, [examples[e].prompt for e, _ in slots], round_settings, description=f"sampling ({source})")
        for (example, slot), text in zip(slots, outputs):
            texts[example][slot] = text


def _unique(items: list[Item]) -> list[Item]:
    """One item per id (a prompt given twice that drew the same completions is ranked once)."""
    return list({item.id: item for item in items}.values())


def generated_items(request: GenerationRequest, model, data, out: str | Path) -> list[Item]:
    """The items of a generating start: those kept beside `out` by an earlier start, else sampled now and kept.

    `model` is the ModelOptions to sample from, `data` the DataOptions of the prompts."""
    from ..generate.engine import check_fits, token_lengths

    kept = items_path(out)
    items = reuse_items(kept, request)
    if items is not None:
        return items
    loaded = model.load()
    examples = data.load(loaded, request.settings.seed).examples
    check_fits(loaded, token_lengths(loaded, [e.prompt for e in examples]), [e.where for e in examples],
               request.settings.max_new_tokens)
    note(f"sampling {request.k} completions for each of {len(examples)} prompts from {', '.join(request.sources)}")
    items, skipped = sample_items(loaded, examples, request)
    if not items:
        raise UserError(f"{data.data}: no prompt got {request.k} distinct non-empty completions; raise --temperature "
                        "or --max-new-tokens, or lower --k")
    save_items(kept, request, items, skipped)
    return items
