"""The `report` stage: OUT/report.html, one self-contained page comparing every variant, and OUT/metrics.json.

```yaml
- report: {}
```
Every variant not scored yet is scored first (the eval stage's work), so nothing unscored reaches the report. The
page is put together from the parts every run has (lifecycle/report.py) and what each registered stage adds: its
findings, plots, cost table and section, in the registry's order.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from ...console import note
from ...outputs import atomic_open, write_json
from ..core import (
    APART,
    STAGES,
    Recipe,
    Run,
    Stage,
    Step,
    check_no_options,
    stage_of,
    variant_metrics,
)
from ..report import (
    cost_table,
    examples,
    figures_html,
    forgetting_bars,
    forgetting_finding,
    forgetting_table,
    html_page,
    print_findings,
    quality_table,
    render_findings,
    repetition_finding,
    rouge_bars,
    share_vs_rouge,
    toxicity_bars,
)
from .eval import run_eval


def check_report(options: dict, where: str, names: set, source: str) -> None:
    check_no_options(options, f"{where} (report)")


def run_report(run: Run, step: Step, folder: Path) -> None:
    run_eval(run, step, folder)  # nothing unscored reaches the report
    write_json(run.out / "metrics.json", variant_metrics(run))
    write_report(run.out / "report.html", run.recipe, list(run.variants.values()), variant_metrics(run))
    note(f"wrote {run.out / 'report.html'}")


def write_report(path: Path, recipe: Recipe, variants: list, metrics: dict) -> None:
    with atomic_open(path) as handle:
        handle.write(html_page(f"llmcycle {recipe.name}", report_parts(recipe, variants, metrics)))


def report_parts(recipe: Recipe, variants: list, all_metrics: dict, heading: str = "h1") -> list[str]:
    """The report of one model's run. Variants a stage scores on data of its own (APART) are shown in that stage's
    section only, never in a column beside the test data's scores."""
    apart = apart_names(variants)
    metrics = {name: entry for name, entry in all_metrics.items() if name not in apart}
    compared = [v for v in variants if v.name not in apart]
    return [
        f"<{heading}>llmcycle: {html.escape(recipe.name)}</{heading}>",
        f"<p class='sub'>model {html.escape(recipe.model)} &middot; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        f"<p>{html.escape(recipe.description)}</p>" if recipe.description else "",
        "<h2>What each step bought</h2>", render_findings(finding_list(all_metrics, variants)),
        "<h2>Quality</h2>", quality_table(metrics),
        "<h2>Cost</h2>", cost_table(metrics) + "".join(stage.cost_table(metrics, compared) for stage in STAGES.values()),
        "<div class='grid'>", plots(metrics, compared), "</div>",
        "<h2>Forgetting: held-out tasks</h2>", forgetting_table(metrics),
        *(stage.section(all_metrics, variants) for stage in STAGES.values()),
        "<h2>Outputs side by side</h2>", examples(compared),
    ]


def finding_list(all_metrics: dict, variants: list) -> list:
    """What each stage found (each stage sees every variant), then, over the variants compared on the test data,
    whether held-out tasks were kept and whether outputs loop."""
    found = [finding for stage in STAGES.values() for finding in stage.findings(all_metrics, variants)]
    apart = apart_names(variants)
    metrics = {name: entry for name, entry in all_metrics.items() if name not in apart}
    return found + [f for f in (forgetting_finding(metrics), repetition_finding(metrics)) if f]


def findings(metrics: dict, variants: list) -> str:
    """The findings as the report shows them."""
    return render_findings(finding_list(metrics, variants))


def apart_names(variants: list) -> set[str]:
    """The variants a stage scores on data of its own (APART): never compared with the test data's."""
    return {v.name for v in variants if stage_of(v).variant_role == APART}


def print_run_findings(run: Run, metrics: dict | None = None, title: str = "what each step bought") -> None:
    """The report's findings on the console, after a run whose recipe writes a report (`metrics`: its metrics.json)."""
    if any("report" in entry for entry in run.recipe.stages) and (run.out / "report.html").is_file():
        print_findings(title, finding_list(metrics or variant_metrics(run), list(run.variants.values())))


def plots(metrics: dict, variants: list) -> str:
    """ROUGE-L per variant, the stages' plots (training curves), then cost against quality, toxicity, forgetting."""
    added = [figure for stage in STAGES.values() for figure in stage.plots(metrics, variants)]
    return figures_html([rouge_bars(metrics), *added, share_vs_rouge(metrics), toxicity_bars(metrics), forgetting_bars(metrics)])


REPORT = Stage("report", check_report, run_report)
