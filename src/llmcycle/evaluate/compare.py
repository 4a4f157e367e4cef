"""Comparison tables: several runs' metrics side by side, with the change against the first run."""

from __future__ import annotations

import copy

from ..console import print_table
from .metrics import verdict


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
            if metric in baseline:
                before, after = baseline[metric]["mean"], summary["mean"]
                relative = (after - before) / abs(before) if before else None
                summary["change"] = {"absolute": round(after - before, 6), "relative": None if relative is None else round(relative, 6)}
    return result


COLOURS = {"better": "green", "worse": "red", "same": "default"}


def print_comparison(title: str, runs: dict[str, dict[str, dict]]) -> None:
    """One row per metric, one column per run: mean [95% interval], then (change, relative change) vs the first,
    green where the change is an improvement for that metric and red where it is not (a fall in toxicity is green)."""
    compared = compare(runs)
    metrics = list(dict.fromkeys(metric for run in compared.values() for metric in run))
    rows = [[metric, *(_cell(metric, run.get(metric)) for run in compared.values())] for metric in metrics]
    print_table(title, ["metric", *compared], rows)


def _cell(metric: str, summary: dict | None) -> str:
    if not isinstance(summary, dict) or "mean" not in summary:
        return "-"
    low, high = summary["ci95"]
    text = f"{_fmt(summary['mean'])} [{_fmt(low)}, {_fmt(high)}]"
    change = summary.get("change")
    if change:
        relative = "" if change.get("relative") is None else f", {change['relative'] * 100:+.1f}%"
        colour = COLOURS[verdict(metric, change["absolute"])]
        text += f"\n[{colour}]({_fmt(change['absolute'], signed=True)}{relative})[/{colour}]"
    return text


def _fmt(value: float, signed: bool = False) -> str:
    spec = ".3e" if abs(value) >= 1e5 else ".4f" if abs(value) < 10 else ".2f"
    return format(value, ("+" if signed else "") + spec)
