"""In-context learning: zero-, one- and few-shot prompts, checked against the model's context window.

For each query row, K solved examples are drawn by seed from the shot pool (never the row itself) and laid out
before the query, the layout of the course's Lab 1:

    {shot prompt}
    {shot completion}


    {shot prompt}
    {shot completion}


    {query prompt}
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..console import note
from ..data import Example
from ..data.options import DataOptions
from ..errors import UserError
from ..evaluate.compare import compare, print_comparison
from ..evaluate.metrics import parse_metrics, score
from ..evaluate.predictions import metric_input
from ..models import LoadedModel, ModelOptions
from ..outputs import check_writable, write_json, write_jsonl
from .engine import GenerationSettings, generate, token_lengths
from .predict import prediction_records

SHOT_SEPARATOR = "\n\n\n"
PROMPT_COMPLETION_SEPARATOR = "\n"


@dataclass(frozen=True)
class ShotPrompt:
    """A query with its in-context examples laid out before it."""

    text: str
    shots: int
    """How many examples it holds: the number asked for, or fewer if --truncate-shots dropped some."""


def render_shot(example: Example) -> str:
    return example.prompt.rstrip() + PROMPT_COMPLETION_SEPARATOR + (example.completion or "").strip()


def draw_shots(query: Example, pool: list[Example], shots: int, seed: int, same_source: bool) -> list[Example]:
    """K examples for one query, fixed by (seed, query index); the query itself is never among them."""
    if shots == 0:
        return []
    candidates = [
        example for example in pool
        if not (same_source and example.index == query.index) and example.prompt != query.prompt
    ]
    if len(candidates) < shots:
        raise UserError(f"{shots} shots asked for, but the shot data holds only {len(candidates)} usable examples for {query.where}")
    return random.Random(seed * 1_000_003 + query.index).sample(candidates, shots)


def build_prompts(
    loaded: LoadedModel,
    queries: list[Example],
    pool: list[Example],
    shots: int,
    *,
    seed: int,
    same_source: bool,
    max_new_tokens: int,
    truncate_shots: bool,
) -> list[ShotPrompt]:
    """Prompts with `shots` examples each; one that does not fit the context window is an error, or loses shots."""
    window = loaded.context_window
    reserve = 0 if loaded.is_encoder_decoder else max_new_tokens
    result = []
    for query in queries:
        chosen = draw_shots(query, pool, shots, seed, same_source)
        while True:
            text = SHOT_SEPARATOR.join([*map(render_shot, chosen), query.prompt])
            length = token_lengths(loaded, [text])[0]
            if window is None or length + reserve <= window:
                break
            if not truncate_shots or not chosen:
                raise UserError(
                    f"{query.where}: with {len(chosen)} shots the prompt is {length} tokens"
                    + (f" + {reserve} new tokens" if reserve else "")
                    + f", more than the model's context window of {window}; use fewer --shots or --truncate-shots"
                )
            chosen = chosen[:-1]
        result.append(ShotPrompt(text, len(chosen)))
    return result


def parse_shots(value: str) -> list[int]:
    """`--shots 0,1,5` -> [0, 1, 5]."""
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--shots {value!r}: give a number or a comma-separated list such as 0,1,5") from None
    if not counts or any(count < 0 for count in counts):
        raise UserError(f"--shots {value!r}: counts must be 0 or more")
    if len(set(counts)) != len(counts):
        raise UserError(f"--shots {value!r}: a count is given twice")
    return counts


def shots_path(out_path: str, shots: int, several: bool) -> str:
    """`preds.jsonl` for a single k; `preds.0-shot.jsonl`, `preds.5-shot.jsonl`, ... for several."""
    if not several:
        return out_path
    path = Path(out_path)
    return str(path.with_name(f"{path.stem}.{shots}-shot{path.suffix or '.jsonl'}"))


def shots_label(shots: int) -> str:
    return {0: "zero-shot", 1: "one-shot"}.get(shots, f"{shots}-shot")


def prompt_dataset(
    model: ModelOptions,
    data: DataOptions,
    shots: str,
    settings: GenerationSettings,
    out_path: str,
    *,
    shot_data: DataOptions | None = None,
    truncate_shots: bool = False,
    metrics: list[str] | None = None,
    metrics_out: str | None = None,
) -> dict[str, dict]:
    """In-context learning with each shot count; returns `{label: metrics}` and writes a predictions file per count."""
    counts = parse_shots(shots)
    settings.validate()
    metric_names = parse_metrics(metrics or ["rouge"])
    paths = [shots_path(out_path, k, len(counts) > 1) for k in counts]
    for path in [*paths, *([metrics_out] if metrics_out else [])]:
        check_writable(path)
    loaded = model.load()
    queries = data.load(loaded, settings.seed).examples
    pool_source = shot_data or data
    pool = queries if shot_data is None else shot_data.load(loaded, settings.seed, require_completion=True).examples
    if max(counts) > 0 and shot_data is None and any(e.completion is None for e in pool):
        raise UserError(f"{data.data}: rows used as shots need a completion; pass --shot-data with solved examples")
    # Build (and length-check) every prompt for every count before generating anything.
    prompt_sets = {
        k: build_prompts(loaded, queries, pool, k, seed=settings.seed, same_source=shot_data is None,
                         max_new_tokens=settings.max_new_tokens, truncate_shots=truncate_shots)
        for k in counts
    }
    results: dict[str, dict] = {}
    for k, path in zip(counts, paths):
        shot_prompts = prompt_sets[k]
        truncated = sum(p.shots < k for p in shot_prompts)
        if truncated:
            note(f"{k}-shot: {truncated} of {len(shot_prompts)} prompts lost shots to fit the context window")
        texts = [p.text for p in shot_prompts]
        predictions = generate(loaded, texts, settings, description=f"{shots_label(k)} ({pool_source.data})")
        records = [
            {**record, "shots": p.shots}
            for record, p in zip(prediction_records(queries, texts, predictions), shot_prompts)
        ]
        write_jsonl(path, records)
        note(f"wrote {len(records)} predictions to {path}")
        if all(e.completion is not None for e in queries):
            results[shots_label(k)] = score(metric_input(records, path, loaded, settings.batch_size), metric_names, seed=settings.seed)
    if results:
        print_comparison("in-context learning", results)
        if metrics_out:
            write_json(metrics_out, compare(results))
    else:
        note("the data has no completions, so no metrics were computed")
    return results
