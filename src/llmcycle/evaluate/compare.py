"""Comparison tables: several runs' metrics side by side, with the change against the first run; and what a paired
change shows (`outcome`): better, worse, or no measurable difference."""

from __future__ import annotations

import copy

from ..console import print_table
from .metrics import direction, verdict


def compare(runs: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Copy of `runs` where every metric of a later run carries `change` against the first run.

    `change` is `{"absolute": b - a, "relative": (b - a) / |a|}`; relative is None when the first run scored 0.
    """
    result = copy.deepcopy(runs)
    labels = list(result)
    if len(labels) < 2:
        return result
    baseline = result[labels[0]]
    for label in labels[1:]:
        for metric, summary in result[label].items():
            if metric in baseline and None not in (baseline[metric]["mean"], summary["mean"]):  # None: not measured
                before, after = baseline[metric]["mean"], summary["mean"]
                relative = (after - before) / abs(before) if before else None
                summary["change"] = {"absolute": round(after - before, 6), "relative": None if relative is None else round(relative, 6)}
    return result


COLOURS = {"better": "green", "worse": "red", "same": "default"}
NO_DIFFERENCE = "no measurable difference"
"""The outcome of a paired change whose 95% interval covers 0 (or that could not be resampled)."""


def outcome(metric: str, change: dict | None) -> str:
    """What a paired change in `metric` (`stats.paired_change`: absolute, ci95, p_value) shows: 'better' or 'worse' (by
    the metric's direction) only where its 95% interval excludes 0, else NO_DIFFERENCE; for a metric with no direction
    (length), 'higher' or 'lower'. No change, one row or no resampling shows nothing."""
    low, high = (change or {}).get("ci95") or (None, None)
    if not change or change.get("p_value") is None or low is None or high is None or low <= 0 <= high:
        return NO_DIFFERENCE
    if direction(metric) == 0:
        return "higher" if low > 0 else "lower"
    return verdict(metric, low if low > 0 else high)


def print_comparison(title: str, runs: dict[str, dict[str, dict]]) -> None:
    """One row per metric, one column per run: mean [95% interval], then (change, relative change) vs the first,
    green where the change is an improvement for that metric and red where it is not (a fall in toxicity is green)."""
    compared = compare(runs)
    metrics = list(dict.fromkeys(metric for run in compared.values() for metric in run))
    rows = [[metric, *(_cell(metric, run.get(metric)) for run in compared.values())] for metric in metrics]
    print_table(title, ["metric", *compared], rows)


def _cell(metric: str, summary: dict | None) -> str:
    if not isinstance(summary, dict) or summary.get("mean") is None:
        return "-"  # not measured (names_in_source where no output names anyone)
    low, high = summary["ci95"]
    text = f"{_fmt(summary['mean'])} [{_fmt(low)}, {_fmt(high)}]"
    change = summary.get("change")
    if change and change.get("absolute") is not None:
        relative = "" if change.get("relative") is None else f", {change['relative'] * 100:+.1f}%"
        colour = COLOURS[verdict(metric, change["absolute"])]
        text += f"\n[{colour}]({_fmt(change['absolute'], signed=True)}{relative})[/{colour}]"
    return text


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    spec = ".3e" if abs(value) >= 1e5 else ".4f" if abs(value) < 10 else ".2f"
    return format(value, ("+" if signed else "") + spec)
