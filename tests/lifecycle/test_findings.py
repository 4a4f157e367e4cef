"""Every finding that says one variant is better or worse than another reads a paired test on the same rows: fed
hand-made per-row scores that go up, down or stay level, each finding says better, worse or 'no measurable difference'
in words, and its mark follows (a tick, a warning, or neither)."""

from types import SimpleNamespace

import numpy as np
import pytest

from llmcycle.evaluate.stats import Statistic, bootstrap_summary, mean_of_first, paired_change
from llmcycle.lifecycle.paired import paired_entry
from llmcycle.lifecycle.report import forgetting_finding, print_findings, render_findings
from llmcycle.lifecycle.stages.align import alignment_detoxifies
from llmcycle.lifecycle.stages.baseline import chain_of_thought_pays, shots_help
from llmcycle.lifecycle.stages.finetune import tuning_findings
from llmcycle.lifecycle.stages.rag import _against_closed_book, retrieval_findings
from llmcycle.lifecycle.stages.report import findings

ROWS = 30
BASE = [0.1 + 0.04 * (i % 10) for i in range(ROWS)]
SHIFTS = {
    "up": lambda i: 0.1 + 0.02 * (i % 3),
    "down": lambda i: -0.1 - 0.02 * (i % 3),
    "level": lambda i: 0.05 * (-1) ** i,  # half the rows up, half down: the mean does not move
}
MARK_CLASS = {True: "class='finding'", False: "class='finding no'", None: "class='finding same'"}


def variant(name: str, stage: str):
    return SimpleNamespace(name=name, stage=stage)


def rows(values) -> Statistic:
    return Statistic(np.asarray(values, dtype=np.float64)[:, None], mean_of_first)


def shifted(direction: str, base=BASE) -> list[float]:
    return [value + SHIFTS[direction](i) for i, value in enumerate(base)]


def scored(values, metric: str = "rougeL", **extra) -> dict:
    """A variant's metrics.json entry: the summary of its per-row scores."""
    return {metric: bootstrap_summary(rows(values), 200), **extra}


def paired(metric: str, before, after) -> dict:
    return paired_entry(metric, rows(before), rows(after))


def check(found: list, held, opening: str) -> str:
    """The one finding has this mark and opening, quotes the paired interval, and renders with its mark's class."""
    (shown, text), = found
    assert shown is held and text.startswith(opening), text
    assert "paired change" in text and (held is not None or "an interval that covers 0" in text), text
    assert MARK_CLASS[held] in render_findings(found)
    return text


@pytest.mark.parametrize("direction,held,opening", [
    ("up", True, "In-context examples help this model"),
    ("down", False, "In-context examples make this model worse"),
    ("level", None, "In-context examples make no measurable difference to this model"),
])
def test_shots_against_zero_shot(direction, held, opening):
    metrics = {"zero-shot": scored(BASE),
               "few-shot": scored(shifted(direction), paired={"zero-shot": {"rougeL": paired("rougeL", BASE, shifted(direction))}})}
    text = check(shots_help(metrics, [variant("zero-shot", "baseline"), variant("few-shot", "baseline")]), held, opening)
    assert f"over the same {ROWS} rows" in text and ("little in-context learning" in text) == (held is not True)


@pytest.mark.parametrize("direction,held,beats,place", [
    ("up", True, "Fine-tuning beats prompting", "above zero-shot prompting"),
    ("down", False, "Fine-tuning falls below prompting", "below zero-shot prompting"),
    ("level", None, "Fine-tuning makes no measurable difference against prompting", "no measurable difference from zero-shot prompting"),
])
def test_fine_tuning_against_prompting(direction, held, beats, place):
    tuned = shifted(direction)
    metrics = {"zero-shot": scored(BASE),
               "prompt-tuning": scored(tuned, paired={"zero-shot": {"rougeL": paired("rougeL", BASE, tuned)}},
                                       cost={"method": "prompt-tuning"})}
    found = tuning_findings(metrics, [variant("zero-shot", "baseline"), variant("prompt-tuning", "finetune")])
    assert len(found) == 2
    check(found[:1], held, beats)
    method = check(found[1:], held, "<b>prompt-tuning</b> (prompt-tuning) scores ROUGE-L")
    assert place in method and ("Lester et al." in method) == (held is not True)


FULL = [0.3 + 0.02 * (i % 10) for i in range(ROWS)]
LORA = {
    "close": [value * 0.98 for value in FULL],
    "short": [value * 0.7 for value in FULL],
    "either side": [value * (0.9 + 0.2 * (-1) ** i) for i, value in enumerate(FULL)],
}


@pytest.mark.parametrize("measured_from_lora", [True, False], ids=["lora-vs-full", "full-vs-lora"])
@pytest.mark.parametrize("case,held,opening", [
    ("close", True, "LoRA comes close to full fine-tuning"),
    ("short", False, "LoRA falls short of full fine-tuning"),
    ("either side", None, "This run cannot tell whether LoRA comes close to full fine-tuning"),
])
def test_lora_against_full_is_a_ratio_with_its_paired_interval(case, held, opening, measured_from_lora):
    """Whichever way round the pair was measured, the finding reads LoRA's share of full fine-tuning's ROUGE-L."""
    lora = LORA[case]
    metrics = {"full": scored(FULL, cost={}), "lora": scored(lora, cost={"trainable_share": 0.012})}
    if measured_from_lora:
        metrics["lora"]["paired"] = {"full": {"rougeL": paired("rougeL", FULL, lora)}}
    else:
        metrics["full"]["paired"] = {"lora": {"rougeL": paired("rougeL", lora, FULL)}}
    (shown, text), = tuning_findings(metrics, [variant("full", "finetune"), variant("lora", "finetune")])
    assert shown is held and text.startswith(opening) and "paired over the same rows" in text and "1.20% of the parameters" in text
    low, high = (text.split("[")[1].split("]")[0]).split(", ")
    assert {"close": float(low[:-1]) >= 90, "short": float(high[:-1]) < 90,
            "either side": float(low[:-1]) < 90 <= float(high[:-1])}[case]


TOXICITY = [0.1 + 0.01 * (i % 10) for i in range(ROWS)]


@pytest.mark.parametrize("direction,held,opening", [
    ("down", True, "PPO lowers toxicity"),
    ("up", False, "PPO raises toxicity"),
    ("level", None, "This run does not show PPO lowering toxicity"),
])
def test_ppo_lowers_toxicity_only_where_the_paired_interval_is_below_zero(direction, held, opening):
    after = shifted(direction, TOXICITY)
    metrics = {"lora": {**scored(TOXICITY, "toxicity"), **scored(FULL)},
               "lora+ppo": {**scored(after, "toxicity"), **scored(FULL), "cost": {"from": "lora", "method": "ppo"},
                            "paired": {"lora": {"toxicity": paired("toxicity", TOXICITY, after), "rougeL": paired("rougeL", FULL, FULL)}}}}
    text = check(alignment_detoxifies(metrics, [variant("lora", "finetune"), variant("lora+ppo", "align")]), held, opening)
    assert "lora 0.1450 -> lora+ppo" in text and "; ROUGE-L 0.390 -> 0.390" in text


DIRECT = [float(i % 2 == 0) for i in range(ROWS)]  # half the word problems right when answering directly
REASONED = {
    "up": [float(i % 2 == 0 or i % 4 == 1) for i in range(ROWS)],  # those, and a quarter more
    "down": [float(i % 6 == 0) for i in range(ROWS)],  # a third of those only
    "level": [float(i % 2 == 1) for i in range(ROWS)],  # as many right, other ones
}


@pytest.mark.parametrize("direction,held,opening", [
    ("up", True, "Chain-of-thought pays off"),
    ("down", False, "Chain-of-thought makes answers worse"),
    ("level", None, "Chain-of-thought makes no measurable difference"),
])
def test_chain_of_thought_against_direct_answers(direction, held, opening):
    cot = {"task": "arithmetic", "shots": 3, "direct": {"accuracy": bootstrap_summary(rows(DIRECT), 200)},
           "cot": {"accuracy": bootstrap_summary(rows(REASONED[direction]), 200) | {"change": paired_change(rows(DIRECT), rows(REASONED[direction]))}}}
    text = check(chain_of_thought_pays({"few-shot": {"chain_of_thought": cot}}, []), held, opening)
    assert f"over the same {ROWS} problems" in text and "arithmetic word problems" in text


CLOSED_BOOK = [float(i % 5 == 0) for i in range(ROWS)]
WITH_RETRIEVAL = {"up": [float(i % 5 != 4) for i in range(ROWS)], "down": [0.0] * ROWS, "level": [float(i % 5 == 1) for i in range(ROWS)]}


@pytest.mark.parametrize("direction,held,opening", [
    ("up", True, "Retrieval helps <b>rag</b>"),
    ("down", False, "Retrieval hurts <b>rag</b>"),
    ("level", None, "Retrieval makes no measurable difference to <b>rag</b>"),
])
def test_retrieval_against_the_same_model_closed_book(direction, held, opening):
    answers = WITH_RETRIEVAL[direction]
    arm = {"exact_match": bootstrap_summary(rows(answers), 200),
           "vs_closed_book": {"exact_match": paired_change(rows(CLOSED_BOOK), rows(answers))}}
    metrics = {"rag": {"exact_match": arm["exact_match"], "paired": _against_closed_book("zero-shot", arm),
                       "cost": {"closed_book_exact_match": 0.2}}}
    assert metrics["rag"]["paired"]["zero-shot"]["exact_match"]["outcome"] == {"up": "better", "down": "worse"}.get(direction, "no measurable difference")
    text = check(retrieval_findings(metrics, [variant("rag", "rag")]), held, opening)
    assert "against 0.200 for zero-shot without it" in text and f"over the same {ROWS} questions" in text
    # a variant with retrieval is scored on data of its own, yet its finding is among what each step bought
    assert opening in findings(metrics, [variant("rag", "rag")])


@pytest.mark.parametrize("direction,held,opening", [
    ("down", False, "Held-out tasks suffer: 1 of 1 paired tests"),
    ("up", True, "Held-out tasks are kept: none of 1 paired tests"),
    ("level", None, "No measurable forgetting: none of 1 paired tests"),
])
def test_forgetting_is_a_drop_only_where_the_paired_test_shows_one(direction, held, opening):
    metrics = {"full": {"forgetting": {"classify": 0.0}, "forgetting_paired": {"classify": paired("rougeL", BASE, shifted(direction))}}}
    text = check([forgetting_finding(metrics)], held, opening)
    assert "<b>full</b> on classify (ROUGE-L)" in text and f"over the same {ROWS} items" in text


def test_suite_forgetting_counts_among_the_paired_tests():
    change = paired_change(rows(DIRECT), rows(REASONED["down"]))
    metrics = {"full": {"suite_forgetting": {"mc": {"acc": {"mean": 0.17, "ci95": [0.03, 0.3], "n": ROWS, "change": change},
                                                   "forgot": 10, "learned": 0, "significant": True}}}}
    shown, text = forgetting_finding(metrics)
    assert shown is False and "on mc (accuracy)" in text and f"over the same {ROWS} items" in text


def test_without_a_paired_test_a_finding_claims_nothing():
    metrics = {"zero-shot": scored(BASE), "few-shot": scored(shifted("up"))}  # scored on rows that could not be paired
    (shown, text), = shots_help(metrics, [variant("zero-shot", "baseline"), variant("few-shot", "baseline")])
    assert shown is None and "no measurable difference" in text and "no paired test" in text


def test_the_console_summary_is_the_findings_as_plain_text(capsys):
    print_findings("t5: what each step bought", [(True, "<b>full</b> beats &lt;prompting&gt;"), (None, "no difference"),
                                                  (False, "worse")])
    printed = capsys.readouterr().out
    assert "t5: what each step bought" in printed and "✓ full beats <prompting>" in printed
    assert "≈ no difference" in printed and "⚠ worse" in printed and "<b>" not in printed
