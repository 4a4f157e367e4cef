"""Did tuning make the model forget? Paired comparisons of models scored on the same items.

Every compared model is scored on the same items with the same shots as the first (the model before tuning).
Each metric's change carries a paired bootstrap 95% interval (stats.paired_change); for multiple-choice suites
the change in accuracy also carries McNemar's exact p-value, computed from the discordant items only: those
that went right -> wrong (`forgot`) and wrong -> right (`learned`). Under "no change" each discordant item is
equally likely to go either way, so the p-value is the two-sided binomial tail of min(forgot, learned) out of
forgot + learned at 1/2, computed exactly with integers (it equals scipy's binomtest, which we do not need).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..errors import UserError
from .stats import Statistic, bootstrap_summary, mean_of_first, paired_change


def mcnemar(before: np.ndarray, after: np.ndarray) -> dict:
    """`{"forgot", "learned", "p_value"}` for two 0/1 correctness vectors over the same items."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    forgot, learned = int(np.sum(before & ~after)), int(np.sum(~before & after))
    return {"forgot": forgot, "learned": learned, "p_value": round(exact_binomial_p(forgot, forgot + learned), 6)}


def exact_binomial_p(successes: int, trials: int) -> float:
    """Two-sided exact binomial p-value at 1/2: twice the smaller tail, at most 1."""
    if trials == 0:
        return 1.0
    low = min(successes, trials - successes)
    tail = sum(math.comb(trials, i) for i in range(low + 1))
    return min(1.0, float(Fraction(2 * tail, 2**trials)))


def add_changes(
    runs: dict[str, dict], stats: dict[str, dict[str, Statistic]], resamples: int, seed: int,
    correct: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict]:
    """Give every metric of every run after the first a `change` against the first run.

    `runs[name][metric]` are bootstrap summaries; `stats[name][metric]` the per-item statistics behind them.
    `correct[name][metric]`, when given (suites), holds 0/1 per item: the change's p-value is then McNemar's,
    and the run gets `forgot` and `learned` (of its first such metric, accuracy).
    """
    names = list(runs)
    if len(names) < 2:
        return runs
    base = names[0]
    for name in names[1:]:
        for metric, summary in list(runs[name].items()):
            if metric not in stats[name] or metric not in stats[base]:
                continue
            summary["change"] = paired_change(stats[base][metric], stats[name][metric], resamples, seed)
            if correct and metric in correct[name]:
                test = mcnemar(correct[base][metric], correct[name][metric])
                summary["change"]["p_value"] = test["p_value"]
                runs[name].setdefault("forgot", test["forgot"])
                runs[name].setdefault("learned", test["learned"])
    return runs


def significant(change: dict) -> bool:
    """Whether a change's 95% interval excludes 0 (what a report may call forgetting, or a gain)."""
    low, high = change["ci95"]
    return low > 0 or high < 0


def read_samples(path: str) -> dict[str, dict]:
    """The lines of an `eval --suite --samples` file, by item id (one model's; the `model` field is ignored)."""
    import json
    from pathlib import Path

    result = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
                result[str(record["id"])] = record
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path} line {number}: not a suite sample line (id, correct, ...)") from exc
    return result


def samples_forgetting(before_path: str, after_path: str, resamples: int = 1000, seed: int = 0) -> dict:
    """Forgetting between two models' `--samples` files of the same suite, paired by item id.

    `{"acc": {"mean", "ci95", "n", "change": {"absolute", "relative", "ci95", "p_value"}}, "forgot", "learned",
    "significant"}`: what a recipe's suite probe records for a tuned variant against the base model (`significant`:
    the change's interval excludes 0).
    """
    before, after = read_samples(before_path), read_samples(after_path)
    if set(before) != set(after):
        raise UserError(f"{before_path} and {after_path} score different items; forgetting needs the same suite")
    ids = sorted(before)
    correct = [np.array([float(bool(run[i]["correct"])) for i in ids]) for run in (before, after)]
    stats = [Statistic(values[:, None], mean_of_first) for values in correct]
    summary = bootstrap_summary(stats[1], resamples, seed)
    summary.pop("std", None)
    summary["change"] = paired_change(stats[0], stats[1], resamples, seed)
    test = mcnemar(correct[0], correct[1])
    summary["change"]["p_value"] = test["p_value"]
    return {"acc": summary, "forgot": test["forgot"], "learned": test["learned"], "significant": significant(summary["change"])}
