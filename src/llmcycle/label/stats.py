"""`llmcycle label stats`: what a rankings file says about its labelers, and about a reward model.

- agreement on items ranked more than once (rows of the same prompt and the same set of responses, by different
  labelers): Kendall's tau-b and pairwise agreement, averaged over every two labelers of an item, and
  Krippendorff's alpha for ordinal data over (item, response) units; each with a 95% bootstrap interval that
  resamples items (an item's rankings stay together, as they are not independent);
- seconds per item and flag counts, per labeler and overall;
- with `--reward SPEC` (as `llmcycle align` reads it: rm=DIR, toxicity, word=W), how often the reward orders each
  human-ranked pair (tied pairs left out) as the labeler did, a reward tie counting as not ordered; per labeler and
  overall, bootstrap over rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..console import note, print_table
from ..data.io import BadRow, Row, read_rows
from ..errors import UserError
from ..evaluate.stats import Statistic, bootstrap_summary
from ..outputs import write_json
from .agreement import coincidences, kendall_tau_b, ordinal_alpha, pair_agreements
from .queue import BadSubmission, check_ranking

NO_LABELER = "(none)"
"""The labeler of rows that name none (a rankings file made elsewhere)."""


@dataclass(frozen=True)
class Ranked:
    """One row of a rankings file, checked."""

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    labeler: str
    seconds: float | None
    unsafe: int
    unusable: bool

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Rows of one item: the same prompt and the same responses, in whatever order each labeler saw them."""
        return self.prompt, tuple(sorted(self.responses))

    def rank_of(self, response: str) -> int:
        return self.ranking[self.responses.index(response)]


def read_rankings(path: str) -> list[Ranked]:
    rows, bad = read_rows(path)
    ranked = []
    for row in rows:
        try:
            ranked.append(_ranked(row))
        except ValueError as exc:
            bad.append(BadRow(row.where, str(exc)))
    if bad:
        raise UserError(bad[0].message() + (f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""))
    return ranked


def _ranked(row: Row) -> Ranked:
    values = row.values
    responses = values.get("responses")
    if not isinstance(values.get("prompt"), str):
        raise ValueError("field 'prompt' must be a string")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise ValueError("field 'responses' must be a list of at least two strings")
    if len(set(responses)) < len(responses):
        raise ValueError("field 'responses' repeats a response")
    try:
        ranking = check_ranking(values.get("ranking"), len(responses))
    except BadSubmission as exc:
        raise ValueError(f"field {exc}") from exc
    seconds = values.get("seconds")
    flags = values.get("flags") if isinstance(values.get("flags"), dict) else {}
    unsafe = flags.get("unsafe") if isinstance(flags.get("unsafe"), list) else []
    return Ranked(values["prompt"], tuple(responses), tuple(ranking), str(values.get("labeler") or NO_LABELER),
                  float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
                  sum(bool(u) for u in unsafe), flags.get("unusable") is True)


# ---------------------------------------------------------------- agreement


def _ratio(samples: np.ndarray) -> np.ndarray:
    """(B, items, 2) of (sum, count) per item -> (B,) pooled sum / count; nan where the count is 0."""
    totals = samples.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return totals[..., 0] / totals[..., 1]


def agreement(rows: list[Ranked], resamples: int, seed: int) -> dict | None:
    """Tau, pairwise agreement and alpha over items ranked by two or more labelers; None when there are none."""
    by_item: dict = defaultdict(dict)
    for row in rows:
        by_item[row.key].setdefault(row.labeler, row)  # a labeler's first ranking of an item counts
    shared = {key: list(labelers.values()) for key, labelers in by_item.items() if len(labelers) > 1}
    if not shared:
        return None
    taus, agreements, units = [], [], []
    for (_, canonical), rankers in shared.items():
        aligned = [[row.rank_of(response) for response in canonical] for row in rankers]  # (labelers, k)
        pair_taus = [kendall_tau_b(a, b) for a, b in combinations(aligned, 2)]
        defined = [tau for tau in pair_taus if not np.isnan(tau)]
        taus.append([sum(defined), len(defined)])
        agreements.append(np.sum([pair_agreements(a, b) for a, b in combinations(aligned, 2)], axis=0))
        units.append([[ranks[i] for ranks in aligned] for i in range(len(canonical))])
    values = sorted({rank for item in units for unit in item for rank in unit})
    matrices = np.array([coincidences(item, values).ravel() for item in units])  # (items, V * V)
    width = len(values)

    def alpha(samples: np.ndarray) -> np.ndarray:  # (B, items, V * V) -> (B,)
        return ordinal_alpha(samples.sum(axis=-2).reshape(*samples.shape[:-2], width, width))

    return {
        "items": len(shared),
        "rankings": sum(len(rankers) for rankers in shared.values()),
        "kendall_tau": bootstrap_summary(Statistic(np.array(taus, dtype=float), _ratio), resamples, seed),
        "pairwise_agreement": bootstrap_summary(Statistic(np.array(agreements, dtype=float), _ratio), resamples, seed),
        "krippendorff_alpha": bootstrap_summary(Statistic(matrices, alpha), resamples, seed),
    }


# ---------------------------------------------------------------- time, flags, reward


def seconds_summary(rows: list[Ranked]) -> dict:
    seconds = [row.seconds for row in rows if row.seconds is not None]
    if not seconds:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": round(statistics.fmean(seconds), 3), "median": round(statistics.median(seconds), 3), "n": len(seconds)}


def flag_counts(rows: list[Ranked]) -> dict:
    return {"unsafe_responses": sum(row.unsafe for row in rows), "unusable_prompts": sum(row.unusable for row in rows)}


def reward_orders(rows: list[Ranked], spec: str) -> np.ndarray:
    """(rows, 2): per row, the human-ranked pairs the reward orders the same way, and the pairs (ties left out)."""
    from ..align.reward_sources import Reward

    reward = Reward([spec])
    texts = list(dict.fromkeys((row.prompt, response) for row in rows for response in row.responses))
    scores = dict(zip(texts, reward([p for p, _ in texts], [r for _, r in texts]))) if texts else {}
    counts = []
    for row in rows:
        pairs = [(i, j) for i, j in combinations(range(len(row.responses)), 2) if row.ranking[i] != row.ranking[j]]
        better = [(i, j) if row.ranking[i] < row.ranking[j] else (j, i) for i, j in pairs]
        ordered = sum(scores[(row.prompt, row.responses[b])] > scores[(row.prompt, row.responses[w])] for b, w in better)
        counts.append([ordered, len(better)])
    return np.array(counts, dtype=float).reshape(-1, 2)


def reward_agreement(rows: list[Ranked], spec: str, resamples: int, seed: int) -> dict:
    counts = reward_orders(rows, spec)
    labelers = sorted({row.labeler for row in rows})
    per_labeler = {name: bootstrap_summary(Statistic(counts[[row.labeler == name for row in rows]], _ratio), resamples, seed)
                   for name in labelers}
    return {"overall": bootstrap_summary(Statistic(counts, _ratio), resamples, seed), "per_labeler": per_labeler}


# ---------------------------------------------------------------- the report


def label_stats(path: str, rewards: list[str] = (), out: str | None = None, resamples: int = 1000, seed: int = 0) -> dict:
    """Every statistic of a rankings file (see the module docstring); printed, and written to `out` as JSON."""
    rows = read_rankings(path)
    labelers = sorted({row.labeler for row in rows})
    mine = {name: [row for row in rows if row.labeler == name] for name in labelers}
    report = {
        "file": path, "rows": len(rows), "items": len({row.key for row in rows}),
        "agreement": agreement(rows, resamples, seed),
        "seconds_per_item": seconds_summary(rows), "flags": flag_counts(rows),
        "per_labeler": {name: {"rows": len(own), "seconds_per_item": seconds_summary(own), "flags": flag_counts(own)}
                        for name, own in mine.items()},
        "reward": {spec: reward_agreement(rows, spec, resamples, seed) for spec in rewards},
    }
    print_report(report)
    if out:
        write_json(out, report)
        note(f"wrote {out}")
    return report


def _interval(summary: dict) -> str:
    if summary["mean"] is None:
        return "n/a"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def print_report(report: dict) -> None:
    shared = report["agreement"]
    if shared is None:
        note("no item was ranked by two or more labelers; start the page with --labelers and --overlap 2 to measure agreement")
    else:
        print_table(f"agreement: {shared['items']} items, {shared['rankings']} rankings",
                    ["statistic", "value [95% interval]"],
                    [(name.replace("_", " "), _interval(shared[name]))
                     for name in ("kendall_tau", "pairwise_agreement", "krippendorff_alpha")])
    rows = [(name, own["rows"], _seconds(own["seconds_per_item"]), own["flags"]["unsafe_responses"],
             own["flags"]["unusable_prompts"]) for name, own in report["per_labeler"].items()]
    rows.append(("all", report["rows"], _seconds(report["seconds_per_item"]), report["flags"]["unsafe_responses"],
                 report["flags"]["unusable_prompts"]))
    print_table(f"{report['file']}: {report['rows']} rows, {report['items']} items",
                ["labeler", "rows", "seconds per item (mean)", "unsafe responses", "unusable prompts"], rows)
    for spec, result in report["reward"].items():
        lines = [(name, _interval(summary), summary["n"]) for name, summary in result["per_labeler"].items()]
        lines.append(("all", _interval(result["overall"]), result["overall"]["n"]))
        print_table(f"reward {spec} vs labelers", ["labeler", "pairs ordered alike [95% interval]", "rows"], lines)


def _seconds(summary: dict) -> str:
    return "n/a" if summary["mean"] is None else f"{summary['mean']:.1f}"
