"""Agreement between two or more rankings of the same responses: Kendall's tau-b, pairwise agreement and
Krippendorff's alpha for ordinal data. Small enough to read; tests check them against scipy and `krippendorff`.

Ranks follow the rows' convention: 1 = best, ties share a rank. Every function takes rankings aligned to the same
responses (the caller maps each labeler's shown order back to one order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def kendall_tau_b(first: Sequence[float], second: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in first) * (pairs - ties in second)).

    tau-b corrects for ties, as scipy.stats.kendalltau does by default; nan when either ranking ties everything
    (there is no order to agree with)."""
    concordant = discordant = tied_first = tied_second = 0
    for i, j in combinations(range(len(first)), 2):
        a, b = _sign(first[i] - first[j]), _sign(second[i] - second[j])
        tied_first += a == 0
        tied_second += b == 0
        concordant += a * b > 0
        discordant += a * b < 0
    pairs = len(first) * (len(first) - 1) // 2
    denominator = math.sqrt((pairs - tied_first) * (pairs - tied_second))
    return (concordant - discordant) / denominator if denominator else math.nan


def pair_agreements(first: Sequence[float], second: Sequence[float]) -> tuple[int, int]:
    """(pairs of responses both rankings order the same way, pairs): a tie agrees only with a tie."""
    pairs = list(combinations(range(len(first)), 2))
    agree = sum(_sign(first[i] - first[j]) == _sign(second[i] - second[j]) for i, j in pairs)
    return agree, len(pairs)


def coincidences(units: Sequence[Sequence[int]], values: Sequence[int]) -> np.ndarray:
    """Krippendorff's coincidence matrix (V, V) of `units`, each the values its coders gave one unit.

    Every ordered pair of values within a unit of m values adds 1 / (m - 1); units with fewer than two values
    are not pairable and add nothing. The matrix adds up over units, so a bootstrap can resample units' matrices.
    """
    index = {value: position for position, value in enumerate(values)}
    matrix = np.zeros((len(values), len(values)))
    for unit in units:
        if len(unit) < 2:
            continue
        for i, j in combinations(range(len(unit)), 2):
            a, b = index[unit[i]], index[unit[j]]
            matrix[a, b] += 1 / (len(unit) - 1)
            matrix[b, a] += 1 / (len(unit) - 1)
    return matrix


def ordinal_alpha(matrix: np.ndarray) -> np.ndarray:
    """Krippendorff's alpha for ordinal data from coincidence matrices (..., V, V), values in rank order.

        alpha = 1 - (n - 1) * sum(o_ck * d_ck) / sum(n_c * n_k * d_ck)
        d_ck  = (n_c + ... + n_k - (n_c + n_k) / 2) ** 2      (the ordinal metric, sums over values c..k)

    with n_c the marginal of value c and n the number of pairable values; nan when the expected disagreement is
    0 (every value the same)."""
    marginals = matrix.sum(axis=-1)  # (..., V)
    total = marginals.sum(axis=-1)  # (...)
    cumulative = np.cumsum(marginals, axis=-1)  # (..., V)
    low = np.minimum.outer(np.arange(matrix.shape[-1]), np.arange(matrix.shape[-1]))  # (V, V)
    high = np.maximum.outer(np.arange(matrix.shape[-1]), np.arange(matrix.shape[-1]))
    between = cumulative[..., high] - cumulative[..., low] + marginals[..., low]  # n_low + ... + n_high, (..., V, V)
    metric = (between - (marginals[..., :, None] + marginals[..., None, :]) / 2) ** 2
    observed = (matrix * metric).sum(axis=(-2, -1))
    expected = (marginals[..., :, None] * marginals[..., None, :] * metric).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1 - (total - 1) * observed / np.where(expected > 0, expected, 1), np.nan)
