"""`label stats`: agreement against hand-computed values and reference implementations, time, flags, reward agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, write_jsonl

from llmcycle.label.agreement import (
    coincidences,
    kendall_tau_b,
    ordinal_alpha,
    pair_agreements,
)
from llmcycle.label.stats import label_stats


def shown(prompt: str, responses: list[str], ranks: list[int], labeler: str, order: list[int], **extra) -> dict:
    """A row as the page writes it: the responses in this labeler's order, `ranks` given in source order."""
    return {"prompt": prompt, "responses": [responses[i] for i in order], "ranking": [ranks[i] for i in order],
            "labeler": labeler, **extra}


# Two labelers, two items of three responses (in source order):
#   item 1: ann [1, 2, 3], bob [1, 3, 2]   -> tau 1/3, pairs agreeing 2 of 3
#   item 2: ann [1, 2, 3], bob [1, 2, 3]   -> tau 1,   pairs agreeing 3 of 3
# Krippendorff's alpha (ordinal) by hand: units (item, response) hold (1,1) (2,3) (3,2) (1,1) (2,2) (3,3), so the
# coincidence matrix is [[4,0,0],[0,2,2],[0,2,2]], n_c = 4 each, n = 12; the ordinal metric gives d12 = d23 =
# (8 - 4)^2 = 16 and d13 = (12 - 4)^2 = 64; observed sum o*d = 4 * 16 = 64; expected sum n_c n_k d = 2 * 16 * (16 + 16
# + 64) = 3072; alpha = 1 - 11 * 64 / 3072 = 37/48.
HAND_ROWS = [
    shown("p1", ["a", "b", "c"], [1, 2, 3], "ann", [2, 0, 1], seconds=10, flags={"unsafe": [True, False, False], "unusable": False}),
    shown("p1", ["a", "b", "c"], [1, 3, 2], "bob", [1, 2, 0], seconds=20, flags={"unsafe": [False, False, False], "unusable": True}),
    shown("p2", ["d", "e", "f"], [1, 2, 3], "ann", [0, 1, 2], seconds=30),
    shown("p2", ["d", "e", "f"], [1, 2, 3], "bob", [2, 1, 0]),
    shown("p3", ["g", "h"], [1, 2], "ann", [1, 0]),  # ranked once: not part of agreement
]


def test_agreement_matches_hand_computed_values(tmp_path):
    report = label_stats(str(write_jsonl(tmp_path / "r.jsonl", HAND_ROWS)), resamples=200)
    shared = report["agreement"]
    assert shared["items"] == 2 and shared["rankings"] == 4
    assert shared["kendall_tau"]["mean"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-6)
    assert shared["pairwise_agreement"]["mean"] == pytest.approx(5 / 6, abs=1e-6)
    assert shared["krippendorff_alpha"]["mean"] == pytest.approx(37 / 48, abs=1e-6)
    low, high = shared["kendall_tau"]["ci95"]
    assert low <= shared["kendall_tau"]["mean"] <= high
    assert report["rows"] == 5 and report["items"] == 3
    assert report["seconds_per_item"] == {"mean": 20.0, "median": 20.0, "n": 3}
    assert report["flags"] == {"unsafe_responses": 1, "unusable_prompts": 1}
    assert report["per_labeler"]["ann"]["flags"] == {"unsafe_responses": 1, "unusable_prompts": 0}
    assert report["per_labeler"]["bob"]["seconds_per_item"]["mean"] == 20.0


def test_tau_and_ties_by_hand():
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # [1, 1, 3] vs [1, 2, 3]: concordant 2, discordant 0, ties in the first 1: 2 / sqrt((3 - 1) * 3)
    assert kendall_tau_b([1, 1, 3], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6))
    assert np.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert pair_agreements([1, 1, 3], [1, 2, 3]) == (2, 3)


def random_rankings(rng, count: int, k: int) -> list[list[int]]:
    """Standard competition ranks of random scores with ties (scores drawn from a few values)."""
    rankings = []
    for _ in range(count):
        scores = rng.integers(0, 3, size=k)
        rankings.append([1 + int(np.sum(scores > s)) for s in scores])
    return rankings


def test_tau_matches_scipy():
    kendalltau = pytest.importorskip("scipy.stats").kendalltau
    rng = np.random.default_rng(0)
    for first, second in zip(random_rankings(rng, 200, 5), random_rankings(rng, 200, 5)):
        expected = kendalltau(first, second).statistic
        ours = kendall_tau_b(first, second)
        assert (np.isnan(ours) and np.isnan(expected)) or ours == pytest.approx(expected)


def test_alpha_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(1)
    coders, units = 4, 60
    data = rng.integers(1, 6, size=(coders, units)).astype(float)
    data[:, :30] = np.clip(data[0, :30] + rng.integers(-1, 2, size=(coders, 30)), 1, 5)  # some agreement
    data[rng.random((coders, units)) < 0.3] = np.nan  # missing values: not every coder codes every unit
    values = [1, 2, 3, 4, 5]
    ours = ordinal_alpha(coincidences([[int(v) for v in data[:, u] if not np.isnan(v)] for u in range(units)], values))
    assert ours == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def test_stats_cli_with_a_rule_reward_per_labeler(tmp_path, capsys):
    rows = [
        {"prompt": "p1", "responses": ["thanks thanks", "no"], "ranking": [1, 2], "labeler": "ann"},  # reward agrees
        {"prompt": "p2", "responses": ["no", "thanks"], "ranking": [1, 2], "labeler": "ann"},  # disagrees
        {"prompt": "p3", "responses": ["thanks", "no", "x"], "ranking": [1, 2, 2], "labeler": "bob"},  # 2 of 2 (tie left out)
    ]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    assert run_cli("label", "stats", path, "--reward", "word=thanks", "--out", tmp_path / "stats.json", "--bootstrap", 100) == 0
    report = json.loads((tmp_path / "stats.json").read_text())
    reward = report["reward"]["word=thanks"]
    assert reward["per_labeler"]["ann"]["mean"] == 0.5 and reward["per_labeler"]["bob"]["mean"] == 1.0
    assert reward["overall"]["mean"] == pytest.approx(3 / 4)
    assert report["agreement"] is None
    assert "reward word=thanks vs labelers" in capsys.readouterr().out


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 3]}, "line 2: field ranking: [1, 3] is not a ranking"),
    ({"prompt": "p", "responses": ["a"], "ranking": [1]}, "line 2: field 'responses' must be a list of at least two"),
    ({"prompt": "p", "responses": ["a", "a"], "ranking": [1, 2]}, "line 2: field 'responses' repeats a response"),
])
def test_a_bad_rankings_file_is_one_line_naming_line_and_field(tmp_path, capsys, row, message):
    path = write_jsonl(tmp_path / "r.jsonl", [HAND_ROWS[0], row])
    assert run_cli("label", "stats", path, "--out", tmp_path / "stats.json") == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "stats.json").exists()
