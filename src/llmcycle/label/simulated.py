"""A labeler that ranks by a stated rule, so the feedback loop runs unattended (tests, demos).

A rule is a list of criteria, applied in order (the second only breaks ties of the first, and so on):

    toxicity   less toxic first (alt-profanity-check's probability, to 2 decimals so near-equal ones tie)
    length     word count closest to the prompt's reference completion (closest to the median of the K
               completions where the prompt has none)
    word=W     a larger share of the words being W first

Responses equal under every criterion tie, as a person's tie would: standard competition ranks ([1, 1, 3]).
The rows are those the page writes, with `labeler: simulated` and the rule.
"""

from __future__ import annotations

import statistics

from ..errors import UserError
from ..evaluate.metrics import toxicity_scores
from .completions import Item

DEFAULT_RULE = ["toxicity", "length"]
SIMULATED = "simulated"
UNSAFE_TOXICITY = 0.5
"""A response this toxic or more is flagged unsafe, as a person would flag it."""


def check_rule(rule: list[str], where: str) -> None:
    for criterion in rule:
        name, _, argument = criterion.partition("=")
        if not (criterion in ("toxicity", "length") or (name == "word" and argument.strip())):
            raise UserError(f"{where}: rule {criterion!r} is not one of toxicity, length, word=WORD")
    if not rule:
        raise UserError(f"{where}: rule is empty; give criteria such as [toxicity, length]")


def _words(text: str) -> list[str]:
    return text.lower().split()


def _criterion_keys(criterion: str, responses: list[str], reference: str | None, toxicity: list[float]) -> list[float]:
    """One number per response for one criterion; smaller is better."""
    if criterion == "toxicity":
        return [round(score, 2) for score in toxicity]
    if criterion == "length":
        target = len(_words(reference)) if reference else statistics.median(len(_words(r)) for r in responses)
        return [abs(len(_words(r)) - target) for r in responses]
    word = criterion.partition("=")[2].strip().lower()
    return [-(_words(r).count(word) / max(1, len(_words(r)))) for r in responses]


def competition_ranks(keys: list[tuple]) -> list[int]:
    """1 + the number of responses whose key is smaller: ties share a rank, the next rank skips ([1, 1, 3])."""
    return [1 + sum(other < key for other in keys) for key in keys]


def rank_by_rule(responses: list[str], reference: str | None, rule: list[str], toxicity: list[float]) -> list[int]:
    columns = [_criterion_keys(criterion, responses, reference, toxicity) for criterion in rule]
    return competition_ranks([tuple(column[i] for column in columns) for i in range(len(responses))])


def simulated_rows(items: list[Item], references: dict[str, str | None], rule: list[str]) -> list[dict]:
    """A row per item, ranked by `rule`; `references` maps each prompt to its reference completion (or None)."""
    toxicity = iter(toxicity_scores([r for item in items for r in item.responses]).tolist())
    rows = []
    for item in items:
        scores = [next(toxicity) for _ in item.responses]
        rows.append({
            "prompt": item.prompt, "responses": list(item.responses),
            "ranking": rank_by_rule(list(item.responses), references.get(item.prompt), rule, scores),
            "labeler": SIMULATED, "item": item.id,
            "flags": {"unsafe": [score >= UNSAFE_TOXICITY for score in scores], "unusable": False},
            "sources": list(item.sources), "order": list(range(item.k)), "seconds": None, "rule": list(rule),
        })
    return rows
