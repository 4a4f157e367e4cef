"""What a paired change shows: better or worse by the metric's direction only where its interval excludes 0; the ratio
of two values with its paired interval; resamples where a ratio metric is undefined left out, not turned into NaN."""

import numpy as np

from llmcycle.evaluate.compare import NO_DIFFERENCE, outcome
from llmcycle.evaluate.stats import Statistic, mean_of_first, paired_change, paired_ratio


def rows(values) -> Statistic:
    return Statistic(np.asarray(values, dtype=np.float64)[:, None], mean_of_first)


def test_the_outcome_follows_the_interval_and_the_metrics_direction():
    fell = {"absolute": -0.1, "ci95": [-0.15, -0.05], "p_value": 0.002}
    assert outcome("toxicity", fell) == "better" and outcome("rougeL", fell) == "worse" and outcome("length", fell) == "lower"
    covers = {"absolute": -0.1, "ci95": [-0.15, 0.02], "p_value": 0.1}
    assert outcome("toxicity", covers) == outcome("rougeL", covers) == NO_DIFFERENCE
    unresampled = {"absolute": 0.3, "ci95": [0.3, 0.3], "p_value": None}  # one row: nothing to test
    assert outcome("rougeL", unresampled) == outcome("rougeL", None) == NO_DIFFERENCE


def test_the_ratio_of_two_values_on_the_same_rows_has_a_paired_interval():
    full = [0.3 + 0.02 * (i % 10) for i in range(40)]
    ratio = paired_ratio(rows(full), rows([value * 0.9 for value in full]), 500)
    assert ratio["value"] == 0.9 and ratio["ci95"] == [0.9, 0.9]  # every row keeps 90%: every resample does
    noisy = paired_ratio(rows(full), rows([value * (0.9 + 0.2 * (-1) ** i) for i, value in enumerate(full)]), 500)
    assert noisy["ci95"][0] < noisy["value"] < noisy["ci95"][1]
    assert paired_ratio(rows([0.0] * 5), rows([1.0] * 5), 100) == {"value": None, "ci95": [None, None]}


def test_a_pooled_share_undefined_on_some_resamples_still_gets_an_interval():
    """names_in_source pools (found, used) over rows: a resample drawing only rows without names has no value."""
    def pooled(samples):
        found, used = samples[..., 0].sum(axis=-1), samples[..., 1].sum(axis=-1)
        return np.divide(found, used, out=np.full(found.shape, np.nan), where=used > 0)

    before = Statistic(np.array([[0, 0]] * 8 + [[1, 2]] * 2, dtype=np.float64), pooled)  # names in 2 rows of 10
    after = Statistic(np.array([[0, 0]] * 8 + [[2, 2]] * 2, dtype=np.float64), pooled)
    change = paired_change(before, after, 500)
    assert change["absolute"] == 0.5 and None not in change["ci95"] and change["p_value"] is not None
