"""Score models on a multiple-choice suite: `llmcycle eval --suite`, with `--compare` for forgetting.

acc picks the choice with the highest summed log-likelihood; acc_norm divides it by the choice's length in
characters (lm-eval's acc_norm). Intervals are percentile bootstrap 95% over items; the macro mean over
subjects is recomputed in every resample from the subjects' means.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import print_table
from ..errors import UserError
from ..generate.settings import GenerationSettings
from ..models import ModelOptions
from ..outputs import write_jsonl
from .forgetting import add_changes
from .holistic import holistic_view
from .scoring import SuiteScores, score_model
from .stats import Statistic, bootstrap_summary, mean_of_first
from .suites import Item, Suite, read_item_rows, read_suite

SCORINGS = ("choice", "letter")


def load_suite(source: str, shot_data: str | None, split: str | None = None) -> Suite:
    suite = read_suite(source, split)
    if shot_data:
        suite.shots = read_item_rows(shot_data)
    return suite


def pick_shots(suite: Suite, shots: int, seed: int) -> list[list[Item]]:
    """K shots per item, the same for every model: the first K of the item's subject from separate shot data
    (MMLU's dev split, lm-eval's convention), else K other items drawn by (seed, item)."""
    if shots < 0:
        raise UserError("--shots must be 0 or more")
    if shots == 0:
        return [[] for _ in suite.items]
    separate = bool(suite.shots)
    everything = suite.shots or suite.items
    by_subject: dict[str, list[Item]] = {}
    for other in everything:
        by_subject.setdefault(other.subject, []).append(other)
    chosen = []
    for index, item in enumerate(suite.items):
        own = 0 if separate else 1  # an item is never its own shot
        pool = by_subject.get(item.subject, [])
        pool = pool if len(pool) - own >= shots else everything
        if len(pool) - own < shots:
            raise UserError(f"{item.where}: {shots} shots asked for, but only {len(pool) - own} solved items are available"
                            + ("" if separate else "; pass --shot-data with more"))
        if separate:
            chosen.append(pool[:shots])
        else:  # k + 1 drawn, the item itself (or the last) dropped: k uniform among the others
            drawn = random.Random(seed * 1_000_003 + index).sample(pool, shots + 1)
            chosen.append([other for other in drawn if other.id != item.id][:shots])
    return chosen


def _macro(subjects: list[str]) -> Statistic:
    """Per-item [correct * one-hot(subject), one-hot(subject)]: the mean over subjects of each subject's mean."""
    names = sorted(set(subjects))
    onehot = np.array([[float(s == name) for name in names] for s in subjects])

    def aggregate(samples: np.ndarray) -> np.ndarray:  # (B, n, 2S) -> (B,)
        sums = samples.sum(axis=1)
        hits, counts = sums[:, : len(names)], sums[:, len(names):]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmean(np.where(counts > 0, hits / np.maximum(counts, 1), np.nan), axis=1)

    return Statistic(onehot, aggregate)


def suite_statistics(scores: SuiteScores) -> dict[str, Statistic]:
    return {name: Statistic(values[:, None], mean_of_first) for name, values in scores.correct().items()}


def summarize(scores: SuiteScores, resamples: int, seed: int) -> dict:
    """`acc`, `acc_norm` (mean, ci95, n), per-subject results, their macro mean, and the chance level."""
    correct = scores.correct()
    result: dict = {name: _summary(Statistic(v[:, None], mean_of_first), resamples, seed) for name, v in correct.items()}
    subjects = [item.subject for item in scores.items]
    result["subjects"] = {
        subject: {name: _summary(Statistic(v[[s == subject for s in subjects]][:, None], mean_of_first), resamples, seed)
                  for name, v in correct.items()}
        for subject in sorted(set(subjects))
    }
    macro = _macro(subjects)
    result["macro"] = {name: _summary(Statistic(np.concatenate([macro.values * v[:, None], macro.values], axis=1), macro.aggregate),
                                      resamples, seed) for name, v in correct.items()}
    result["chance"] = round(float(np.mean([1 / len(item.choices) for item in scores.items])), 6)
    return result


def _summary(statistic: Statistic, resamples: int, seed: int) -> dict:
    summary = bootstrap_summary(statistic, resamples, seed)
    summary.pop("std", None)
    return summary


def sample_records(scores: SuiteScores, model: str | None = None) -> list[dict]:
    """One line per item: id, answer, pred (index chosen), correct, loglikelihoods (+ the model when comparing)."""
    preds, norm = scores.predictions(), scores.predictions(True)
    records = []
    for item, lls, pred, pred_norm in zip(scores.items, scores.loglikelihoods, preds, norm):
        record = {"id": item.id, "subject": item.subject, "answer": item.answer, "pred": int(pred),
                  "correct": bool(pred == item.answer), "pred_norm": int(pred_norm), "loglikelihoods": [round(float(x), 6) for x in lls]}
        records.append({"model": model, **record} if model else record)
    return records


def model_labels(specs: list[str]) -> list[str]:
    """Folder names as labels; the full argument where two collide."""
    names = [Path(spec).name or spec for spec in specs]
    labels = [name if names.count(name) == 1 else spec for name, spec in zip(names, specs)]
    if len(set(labels)) != len(labels):
        raise UserError(f"--compare names a model twice ({', '.join(specs)})")
    return labels


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise UserError(f"--scoring {scoring!r}: use {' or '.join(SCORINGS)}")


def with_options(base: ModelOptions, spec: str) -> ModelOptions:
    """A compared model: `spec` loaded with the same dtype and remote-code setting as the first one."""
    return ModelOptions(spec, base.dtype, base.trust_remote_code)


@dataclass
class SuiteRequest:
    """What `llmcycle eval --suite` was asked to do."""

    suite: str
    shots: int = 0
    shot_data: str | None = None
    scoring: str = "choice"
    split: str | None = None
    limit: int | None = None
    samples: str | None = None
    resamples: int = 1000
    seed: int = 0
    batch_size: int = 8
    holistic: bool = False


def evaluate_suite(model: ModelOptions, request: SuiteRequest, compare: list[str] | None = None, settings=None) -> dict:
    """Score `model` (and each `compare` model, on the same items and shots) on a suite; see module docstring.

    Returns one model's `{"acc", "acc_norm", "subjects", "macro", "chance"}`, or with `compare`
    `{label: {...}}` where later models' metrics carry a paired `change` and `forgot`/`learned` counts.
    """
    check_scoring(request.scoring)
    suite = load_suite(request.suite, request.shot_data, request.split)
    if request.limit is not None:
        if request.limit < 1:
            raise UserError("--limit must be at least 1")
        suite.items = suite.items[: request.limit]
    shots = pick_shots(suite, request.shots, request.seed)
    specs = [model.model, *(compare or [])]
    runs, stats, correct, records = {}, {}, {}, []
    for label, options in zip(model_labels(specs), [model, *(with_options(model, s) for s in compare or [])]):
        loaded = options.load()
        scores = score_model(loaded, suite, shots, request.scoring, request.batch_size, f"{label} on {Path(request.suite).name}")
        runs[label] = summarize(scores, request.resamples, request.seed)
        stats[label], correct[label] = suite_statistics(scores), scores.correct()
        records += sample_records(scores, label if compare else None)
        if request.holistic:
            runs[label]["holistic"] = holistic_view(loaded, suite, shots, scores, request, settings)
        del loaded
    add_changes(runs, stats, request.resamples, request.seed, correct)
    print_suite_table(runs)
    if request.samples:
        write_jsonl(request.samples, records)
    return runs if compare else next(iter(runs.values()))


def print_suite_table(runs: dict[str, dict]) -> None:
    """One row per model: acc and acc_norm with intervals, macro mean, chance; compared models add the change."""
    def cell(summary: dict) -> str:
        text = f"{summary['mean']:.4f} [{summary['ci95'][0]:.4f}, {summary['ci95'][1]:.4f}]"
        change = summary.get("change")
        if change:
            p_value = "" if change.get("p_value") is None else f", p={change['p_value']:.3g}"
            text += f"\nchange {change['absolute']:+.4f} [{change['ci95'][0]:+.4f}, {change['ci95'][1]:+.4f}]{p_value}"
        return text

    rows = [[label, cell(run["acc"]), cell(run["acc_norm"]), f"{run['macro']['acc']['mean']:.4f}", f"{run['chance']:.4f}",
             f"{run['forgot']}/{run['learned']}" if "forgot" in run else "-", run["acc"]["n"]] for label, run in runs.items()]
    print_table("multiple-choice suite (95% bootstrap intervals)", ["model", "acc", "acc_norm", "macro acc", "chance",
                                                                    "forgot/learned", "items"], rows)


def score_probe(model: str, suite: str, samples: str, *, shots: int = 0, scoring: str = "choice", limit: int | None = None,
                holistic: bool = False, settings=None) -> dict:
    """One model on a recipe's suite probe; its items go to `samples`, which forgetting.samples_forgetting pairs later.

    With `holistic`, the result carries the HELM-style view (generations use `settings`, the recipe's)."""
    settings = settings or GenerationSettings()
    request = SuiteRequest(suite, shots, None, scoring, limit=limit, samples=samples, seed=settings.seed,
                           batch_size=settings.batch_size, holistic=holistic)
    return {**evaluate_suite(ModelOptions(model), request, settings=settings), "samples": samples}
