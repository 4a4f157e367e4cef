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

from ..data import Example
from ..errors import UserError
from .engine import token_lengths
from ..models import LoadedModel

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
