"""Bootstrap confidence intervals for any metric that can be recomputed from per-example statistics.

A metric hands us an (n, k) array of per-example statistics and a function that turns resampled arrays
(B, n, k) into B metric values: a mean for ROUGE, corpus BLEU from summed n-gram counts, exp(total NLL /
total tokens) for perplexity. Resampling rows and recomputing gives the percentile interval. Resamples are
drawn in chunks so memory stays bounded on large evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Aggregate = Callable[[np.ndarray], np.ndarray]
"""(B, n, k) resampled per-example statistics -> (B,) metric values."""

DEFAULT_RESAMPLES = 1000
CHUNK_ELEMENTS = 4_000_000


@dataclass
class Statistic:
    """Per-example statistics of one metric and how to aggregate them."""

    values: np.ndarray
    """(n, k) per-example statistics."""
    aggregate: Aggregate

    def point(self) -> float:
        return float(self.aggregate(self.values[None])[0])


def mean_of_first(samples: np.ndarray) -> np.ndarray:
    return samples[..., 0].mean(axis=-1)


def bootstrap(statistic: Statistic, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """`resamples` metric values, each on n rows drawn with replacement."""
    values = statistic.values
    n = len(values)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(1, values.size))
    results = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        indices = rng.integers(0, n, size=(size, n))  # (chunk, n)
        results.append(statistic.aggregate(values[indices]))  # values[indices]: (chunk, n, k)
    return np.concatenate(results)


def bootstrap_summary(statistic: Statistic, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """`{"mean", "ci95": [lo, hi], "n", "std"}`; "mean" is the metric on all rows (corpus BLEU for BLEU)."""
    n = len(statistic.values)
    summary: dict = {"mean": _round(statistic.point())}
    if resamples > 0 and n > 1:
        samples = bootstrap(statistic, resamples, seed)
        # A ratio metric is undefined on a resample with no denominator (names_in_source when no drawn output
        # names anyone): such resamples carry no information about the interval.
        low, high = np.nanpercentile(samples, [2.5, 97.5]) if not np.isnan(samples).all() else (np.nan, np.nan)
        summary["ci95"] = [_round(low), _round(high)]
    else:
        summary["ci95"] = [summary["mean"], summary["mean"]]
    summary["n"] = n
    if statistic.values.shape[1] == 1:
        summary["std"] = _round(float(statistic.values[:, 0].std(ddof=1)) if n > 1 else 0.0)
    return summary


def _round(value: float) -> float | None:
    """Six decimals; None for a value that was not measured (nan), so JSON never carries NaN."""
    return None if np.isnan(value) else float(round(float(value), 6))


def paired_change(before: Statistic, after: Statistic, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Change `after - before` on the same rows, with a paired bootstrap: each resample draws the same rows for both.

    `{"absolute", "relative", "ci95", "p_value"}`; the p-value is the two-sided bootstrap one (twice the smaller
    share of resampled changes on either side of 0, at least 1/resamples), relative is None when before is 0.
    """
    if len(before.values) != len(after.values):
        raise ValueError("a paired comparison needs the same rows on both sides")
    width = before.values.shape[1]
    joined = Statistic(
        np.concatenate([before.values, after.values], axis=1),
        lambda samples: after.aggregate(samples[..., width:]) - before.aggregate(samples[..., :width]),
    )
    point, base = joined.point(), before.point()
    change: dict = {"absolute": _round(point), "relative": _round(point / abs(base)) if base else None}
    if resamples > 0 and len(before.values) > 1:
        samples = bootstrap(joined, resamples, seed)
        change.update(ci95=_percentile_interval(samples), p_value=_two_sided_p(samples, resamples))
    else:
        change.update(ci95=[change["absolute"], change["absolute"]], p_value=None)
    return change


def paired_ratio(before: Statistic, after: Statistic, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Ratio `after / before` of the two metric values on the same rows, with a paired bootstrap 95% interval.

    `{"value", "ci95"}`; None where `before` is 0 (on all rows, or on every resample). What "LoRA keeps 95% of full
    fine-tuning's ROUGE-L" rests on: the same rows drawn for both in each resample, as in `paired_change`.
    """
    if len(before.values) != len(after.values):
        raise ValueError("a paired comparison needs the same rows on both sides")
    width = before.values.shape[1]

    def ratio(samples: np.ndarray) -> np.ndarray:  # (B, n, k_before + k_after) -> (B,); nan where before is 0
        numerator, denominator = after.aggregate(samples[..., width:]), before.aggregate(samples[..., :width])
        return np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=denominator != 0)

    joined = Statistic(np.concatenate([before.values, after.values], axis=1), ratio)
    value = _round(joined.point())
    if resamples > 0 and len(before.values) > 1:
        return {"value": value, "ci95": _percentile_interval(bootstrap(joined, resamples, seed))}
    return {"value": value, "ci95": [value, value]}


def _percentile_interval(samples: np.ndarray) -> list:
    """The 2.5th and 97.5th percentiles of the resampled values that are defined (a ratio metric such as
    names_in_source is undefined on a resample with no denominator); [None, None] when none is."""
    if np.isnan(samples).all():
        return [None, None]
    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return [_round(low), _round(high)]


def _two_sided_p(samples: np.ndarray, resamples: int) -> float | None:
    """Twice the smaller share of defined resampled changes on either side of 0, at least 1/resamples, at most 1."""
    defined = samples[~np.isnan(samples)]
    if not len(defined):
        return None
    p_value = 2 * min(np.mean(defined <= 0), np.mean(defined >= 0))
    return _round(min(1.0, max(p_value, 1 / resamples)))
