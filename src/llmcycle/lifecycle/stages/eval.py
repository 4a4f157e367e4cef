"""The `eval` stage: every variant not scored yet on the test data, and every variant on the probes.

```yaml
probes:                                   # held-out tasks: did tuning make the model forget them?
  - {task: classify, rows: 30, seed: 3}
  - {suite: mmlu/, shots: 5, holistic: true}   # a multiple-choice suite: forgetting with a paired test
stages:
  - eval: {}
```
The base model is probed once, as the first of its prompted variants; each tuned variant's change on the probes
against it is its forgetting (ROUGE-L on the tasks; on a suite, the paired test of `eval --suite`). The report
stage runs this first too, so nothing unscored reaches the report.
"""

from __future__ import annotations

import html
from pathlib import Path

from ...evaluate.benchmark import score_probe
from ...evaluate.forgetting import samples_forgetting
from ...evaluate.compare import outcome
from ..core import (
    APART,
    BASE,
    SMOKE_ROWS,
    Recipe,
    Run,
    Stage,
    Step,
    Variant,
    check_no_options,
    first_base,
    score,
    slug,
    stage_of,
    with_role,
)
from ..paired import pair_variants
from ..report import interval, outcome_class


def check_eval(options: dict, where: str, names: set, source: str) -> None:
    check_no_options(options, f"{where} (eval)")


def run_eval(run: Run, step: Step, folder: Path) -> None:
    """Score every variant not scored yet on the test data, and every variant on the probes."""
    base = first_base(run)
    for variant in run.variants.values():
        role = stage_of(variant).variant_role
        if role == APART:
            continue  # scored by its own stage on its own data; its model is probed as the variant it extends
        if role != BASE and not variant.metrics:
            variant.metrics, variant.predictions = score(run, variant, run.test, folder / f"{slug(variant.name)}.jsonl", run.recipe.metrics)
        probed = role != BASE or variant is base  # the prompted variants share one model: probe it once
        if not variant.probes and probed:
            _score_probes(run, variant, folder)
        if not variant.suites and probed:
            variant.suites = {label: _score_suite(run, variant, spec, folder / f"{slug(variant.name)}.probe-{label}.samples.jsonl")
                              for label, spec in _suite_probes(run.recipe).items()}
    pair_variants(run)  # every comparison the report makes, as a paired test on the same rows


def _score_probes(run: Run, variant: Variant, folder: Path) -> None:
    """ROUGE-L on each probe task; the predictions files are kept for the paired forgetting test."""
    scored = {task: score(run, variant, path, folder / f"{slug(variant.name)}.probe-{task}.jsonl", ["rouge"])
              for task, path in run.probe_files().items()}
    variant.probes = {task: result for task, (result, _) in scored.items()}
    variant.probe_predictions = {task: predictions for task, (_, predictions) in scored.items()}


def _suite_probes(recipe: Recipe) -> dict[str, dict]:
    """The recipe's suite probes by label: `name`, else the suite's file or folder name."""
    specs = [spec for spec in recipe.probes if isinstance(spec, dict) and "suite" in spec]
    return {str(spec.get("name") or Path(spec["suite"]).stem): spec for spec in specs}


def _score_suite(run: Run, variant: Variant, spec: dict, samples: Path) -> dict:
    path = spec["suite"] if Path(spec["suite"]).exists() else str(Path(run.recipe.source).parent / spec["suite"])
    return score_probe(variant.model, path, str(samples), shots=spec.get("shots", 0), scoring=spec.get("scoring", "choice"),
                       limit=SMOKE_ROWS if run.smoke else None, holistic=bool(spec.get("holistic")), settings=run.settings())


def probes_entry(variant: Variant, run: Run) -> dict:
    """metrics.json's `probes` and `suites`, and for a variant that is not the base model, its `forgetting` (change in
    probe ROUGE-L), `forgetting_paired` (that change as a paired test on the probe's rows, with its outcome) and
    `suite_forgetting` (the paired test) against the base model's."""
    entry, tuned = {}, stage_of(variant).variant_role != BASE
    bases = with_role(run.variants.values(), BASE)
    if variant.probes:
        entry["probes"] = variant.probes
        base = next((v.probes for v in bases if v.probes), {})
        if tuned and base:
            entry["forgetting"] = {task: round(variant.probes[task]["rougeL"]["mean"] - base[task]["rougeL"]["mean"], 6)
                                   for task in variant.probes if task in base}
    if tuned and variant.forgetting_paired:
        entry["forgetting_paired"] = variant.forgetting_paired
    if variant.suites:
        entry["suites"] = variant.suites
        base = next((v.suites for v in bases if v.suites), {})
        if tuned and base:
            entry["suite_forgetting"] = {task: samples_forgetting(base[task]["samples"], suite["samples"])
                                         for task, suite in variant.suites.items() if task in base}
    return entry


# ---------------------------------------------------------------- what it adds to the report


def suites_sections(metrics: dict, variants: list) -> str:
    return suites_section(metrics) + holistic_section(metrics)


def suites_section(metrics: dict) -> str:
    """Accuracy on each multiple-choice suite per variant, and, for tuned variants, the paired forgetting test."""
    labels = list(dict.fromkeys(label for entry in metrics.values() for label in entry.get("suites", {})))
    if not labels:
        return ""
    head = "".join(f"<th>{html.escape(label)}: acc</th><th>acc_norm</th><th>change vs base (paired)</th>" for label in labels)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>{''.join(_suite_cells(entry, label) for label in labels)}</tr>"
                   for name, entry in metrics.items() if entry.get("suites"))
    chance = {label: next(e["suites"][label].get("chance") for e in metrics.values() if label in e.get("suites", {}))
              for label in labels}
    note = ", ".join(f"{html.escape(label)} {value:.3f}" for label, value in chance.items() if isinstance(value, (int, float)))
    return ("<h2>Benchmark suites</h2><table><tr><th>variant</th>" + head + "</tr>" + rows + "</table>"
            f"<p class='ci'>acc: the choice with the highest summed log-likelihood; acc_norm: divided by the choice's length "
            f"in characters (lm-evaluation-harness's convention). Chance: {note or '-'}. The change is paired over the same "
            "items against the base model, with its 95% bootstrap interval, McNemar's exact p-value and the items that went "
            "right to wrong (forgot) and wrong to right (learned); <b>significant</b> only where the interval excludes 0.</p>")


def _suite_cells(entry: dict, label: str) -> str:
    suite = entry.get("suites", {}).get(label)
    if suite is None:
        return "<td>-</td><td>-</td><td>-</td>"
    test = entry.get("suite_forgetting", {}).get(label)
    change = "-"
    if test:
        delta = test["acc"]["change"]
        low, high = delta["ci95"]
        mark = "<b>significant</b>" if test["significant"] else "not significant"
        change = (f"<span class='{outcome_class(outcome('acc', delta))}'>{delta['absolute']:+.3f}</span> "  # coloured where significant
                  f"<span class='ci'>[{low:+.3f}, {high:+.3f}], p={delta['p_value']:.3g}</span><br>"
                  f"forgot {test['forgot']}, learned {test['learned']}: {mark}")
    return f"<td>{interval(suite.get('acc'))}</td><td>{interval(suite.get('acc_norm'))}</td><td>{change}</td>"


HOLISTIC_ROWS = (
    ("accuracy", "accuracy (acc)"), ("calibration_ece", "calibration: expected calibration error (lower is better)"),
    ("robustness", "robustness: acc on perturbed questions"), ("toxicity", "toxicity of generations"),
)


def holistic_section(metrics: dict) -> str:
    """HELM's idea in small: one table per suite, one column per variant, each aspect with its interval."""
    parts = []
    for label in dict.fromkeys(label for e in metrics.values() for label, s in e.get("suites", {}).items() if s.get("holistic")):
        names = [name for name, e in metrics.items() if e.get("suites", {}).get(label, {}).get("holistic")]
        views = [metrics[name]["suites"][label]["holistic"] for name in names]
        rows = "".join(f"<tr><td>{title}</td>{''.join(f'<td>{interval(view.get(key), 4)}</td>' for view in views)}</tr>"
                       for key, title in HOLISTIC_ROWS)
        speed = "".join(f"<td>{interval(view.get('efficiency', {}).get('tokens_per_s'), 1)}</td>" for view in views)
        parts.append(f"<h3>{html.escape(label)}</h3><table><tr><th>aspect</th>"
                     + "".join(f"<th>{html.escape(n)}</th>" for n in names) + f"</tr>{rows}"
                     f"<tr><td>efficiency: generated tokens/s</td>{speed}</tr></table>")
    if not parts:
        return ""
    return ("<h2>Holistic view</h2><p>Accuracy alone hides how sure a model is, how it holds up to typos and casing, what "
            "it says and how fast: each aspect measured on the same suite, with its 95% interval.</p>" + "".join(parts))


EVAL = Stage("eval", check_eval, run_eval, metrics_entry=probes_entry, section=suites_sections)
