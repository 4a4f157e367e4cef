"""Paired tests between variants scored on the same rows: what every comparison the report makes is decided by.

Every variant on the test data left its predictions (prompt, prediction, reference per row, in the test data's
order). Its per-row statistics are recomputed from them, for every metric of the recipe but perplexity (which needs
the model), and each metric's change against another variant is a paired bootstrap over the same rows
(`stats.paired_change`, the one `eval --compare` computes) with its outcome (`compare.outcome`: better, worse, or no
measurable difference where the 95% interval covers 0) and the ratio of the two values with its paired interval
(`stats.paired_ratio`: how much of full fine-tuning's ROUGE-L LoRA keeps).

A variant is compared with the variants a finding may read it against (`compared_with`): a prompting variant with
the earlier ones (few-shot against zero-shot); any other with every prompting variant (fine-tuning against the best
prompt), the earlier variants of its own stage (LoRA against full fine-tuning) and the variant it started from (PPO
and DPO against the LoRA run). On the probes, each tuned variant's ROUGE-L is paired with the base model's
(`forgetting_paired`). Rows are paired only where both files hold the same references in the same order.
"""

from __future__ import annotations

from pathlib import Path

from ..evaluate.compare import outcome
from ..evaluate.metrics import statistics
from ..evaluate.predictions import metric_input, read_predictions
from ..evaluate.stats import Statistic, paired_change, paired_ratio
from .core import APART, BASE, TUNED, Run, Variant, stage_of, with_role

RESAMPLES = 1000
NEEDS_MODEL = ("perplexity",)
"""Metrics a predictions file cannot be rescored with: they are left out of the paired tests."""

Rows = tuple[list, dict[str, Statistic]]
"""A predictions file as (its references, in order; {metric: per-row statistics})."""


def paired_entry(metric: str, before: Statistic, after: Statistic, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """The change in `metric` from `before` to `after` over the same rows: `paired_change`'s absolute, relative,
    ci95 and p_value, with n, the outcome and the ratio after / before with its paired interval."""
    change = paired_change(before, after, resamples, seed)
    return change | {"n": len(before.values), "outcome": outcome(metric, change),
                     "ratio": paired_ratio(before, after, resamples, seed)}


def paired_block(before: Rows | None, after: Rows | None, seed: int = 0) -> dict:
    """{metric: paired_entry} for every metric both hold; {} unless both are the same rows in the same order."""
    if before is None or after is None or before[0] != after[0]:
        return {}
    return {metric: paired_entry(metric, before[1][metric], statistic, seed) for metric, statistic in after[1].items()
            if metric in before[1]}


def row_statistics(path: str | None, metrics: list[str]) -> Rows | None:
    """A predictions file's references and per-row statistics of `metrics`; None where there is no file."""
    if not path or not Path(path).is_file():
        return None
    records, wheres = read_predictions(path)
    names = [name for name in metrics if name not in NEEDS_MODEL]
    return [r.get("reference") for r in records], statistics(metric_input(records, path, None, 8, wheres), names)


class RowCache:
    """Each predictions file read and scored once per pass, however many pairs it is in."""

    def __init__(self):
        self.loaded: dict[tuple, Rows | None] = {}

    def rows(self, path: str | None, metrics: list[str]) -> Rows | None:
        key = (path, tuple(metrics))
        if key not in self.loaded:
            self.loaded[key] = row_statistics(path, metrics)
        return self.loaded[key]


def compared_with(run: Run, variant: Variant) -> list[Variant]:
    """The variants on the test data that `variant`'s paired block holds changes against (module docstring)."""
    names = list(run.variants)
    earlier = set(names[: names.index(variant.name)])
    on_test = [v for v in run.variants.values() if v is not variant and stage_of(v).variant_role != APART]
    if stage_of(variant).variant_role == BASE:
        return [v for v in on_test if v.name in earlier and stage_of(v).variant_role == BASE]
    start = variant.cost.get("from")
    return [v for v in on_test if stage_of(v).variant_role == BASE or v.name == start
            or (v.name in earlier and v.stage == variant.stage)]


def pair_variants(run: Run) -> None:
    """Give every variant on the test data the paired changes it lacks, and every probed tuned variant its paired
    forgetting test on each probe task (run by the eval stage, where the predictions are at hand)."""
    cache, seed = RowCache(), run.settings().seed
    for variant in run.variants.values():
        if stage_of(variant).variant_role == APART:
            continue
        for other in compared_with(run, variant):
            if other.name not in variant.paired:
                block = paired_block(cache.rows(other.predictions, run.recipe.metrics), cache.rows(variant.predictions, run.recipe.metrics), seed)
                if block:
                    variant.paired[other.name] = block
    pair_probes(run, cache, seed)


def pair_probes(run: Run, cache: RowCache, seed: int) -> None:
    """Each tuned variant's probe ROUGE-L against the base model's (the first base variant probed), per task."""
    base = next((v for v in with_role(run.variants.values(), BASE) if v.probe_predictions), None)
    if base is None:
        return
    for variant in with_role(run.variants.values(), TUNED):
        for task, path in variant.probe_predictions.items():
            if task in variant.forgetting_paired or task not in base.probe_predictions:
                continue
            block = paired_block(cache.rows(base.probe_predictions[task], ["rouge"]), cache.rows(path, ["rouge"]), seed)
            if "rougeL" in block:
                variant.forgetting_paired[task] = block["rougeL"]
