"""The run report's shared parts: the page, the tables and plots every run has, and the helpers the stages use
for the parts they add (lifecycle/stages/report.py puts the report together from both).

The report states what the course teaches and whether this run shows it, with the numbers, rather than hiding a
result that differs (a model this small may not profit from few-shot prompting, for example). Every part takes
metrics.json's entries (and the variants), so the report reads only what was measured. Whatever it calls better or
worse, in a finding or a colour, is the outcome of a paired test on the same rows (metrics.json's `paired`,
lifecycle/paired.py); where the 95% interval covers 0 it says there is no measurable difference.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from .. import console
from ..evaluate.compare import NO_DIFFERENCE, outcome

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.35rem 0.6rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; } th { background: #f5f5f5; }
.better { color: #1a7f37; } .worse { color: #b42318; } .ci { color: #777; font-size: 0.8rem; }
.finding { padding: 0.5rem 0.8rem; margin: 0.4rem 0; border-left: 4px solid #1a7f37; background: #f3faf5; }
.finding.no { border-color: #b54708; background: #fff8eb; }
.finding.same { border-color: #999; background: #f6f6f6; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; } img { max-width: 100%; }
pre { background: #f6f8fa; padding: 0.6rem 0.8rem; overflow-x: auto; font-size: 0.82rem; }
td.text { text-align: left; white-space: pre-wrap; font-size: 0.82rem; max-width: 420px; }
"""


def html_page(title: str, parts: list[str]) -> str:
    """One self-contained HTML file: the style inline, the plots embedded."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def mean(entry: dict, metric: str) -> float | None:
    value = entry.get(metric)
    return value["mean"] if isinstance(value, dict) and "mean" in value else None


def interval(summary: dict | None, digits: int = 3) -> str:
    """A mean with its 95% interval below it, or '-'."""
    if not isinstance(summary, dict) or summary.get("mean") is None:
        return "-"
    low, high = summary["ci95"]
    bounds = "-" if low is None or high is None else f"{low:.{digits}f}, {high:.{digits}f}"
    return f"{summary['mean']:.{digits}f}<br><span class='ci'>[{bounds}]</span>"


# ---------------------------------------------------------------- findings


MARKS = {True: ("", "&#10003;", "✓"), False: (" no", "&#9888;", "⚠"), None: (" same", "&#8776;", "≈")}
"""A finding's (class, HTML mark, console mark): held, shown the opposite, or no measurable difference."""


def render_findings(found: list) -> str:
    """Findings as the report shows them: a tick where the course's claim held in this run, a warning where the
    run shows the opposite, an even mark where the paired test shows no measurable difference."""
    return "".join(f"<div class='finding{MARKS[shown][0]}'>{MARKS[shown][1]} {text}</div>" for shown, text in found)


def print_findings(title: str, found: list) -> None:
    """The findings on the console (stdout: they are results), as plain text under the same marks."""
    if not found:
        return
    console.out.print(title, style="bold", markup=False, highlight=False)
    for shown, text in found:
        console.out.print(f"{MARKS[shown][2]} {html.unescape(re.sub(r'<[^>]+>', '', text))}", markup=False, highlight=False)


def held(result: str) -> bool | None:
    """A finding's mark from a paired outcome where the course expects a gain: better held, worse did not, and no
    measurable difference is neither."""
    return {"better": True, "worse": False}.get(result)


def outcome_class(result: str) -> str:
    """The CSS class that colours a change: only a measured better or worse is coloured."""
    return result if result in ("better", "worse") else ""


TURNED = {"better": "worse", "worse": "better", "higher": "lower", "lower": "higher"}


def oriented_pair(metrics: dict, after: str, before: str, metric: str) -> dict | None:
    """The paired change in `metric` from variant `before` to `after` (metrics.json's `paired`), turned round where it
    was measured from `after` to `before`; None where the two were not compared on the same rows."""
    entry = metrics.get(after, {}).get("paired", {}).get(before, {}).get(metric)
    if entry:
        return entry
    reverse = metrics.get(before, {}).get("paired", {}).get(after, {}).get(metric)
    return _turned_round(reverse) if reverse else None


def _negated(value):
    return None if value is None else -value


def _turned_round(entry: dict) -> dict:
    low, high = entry.get("ci95") or (None, None)
    ratio = entry.get("ratio") or {}
    ratio_low, ratio_high = ratio.get("ci95") or (None, None)
    inverted = [None if not v else 1 / v for v in (ratio.get("value"), ratio_high, ratio_low)]
    return {"absolute": _negated(entry.get("absolute")), "ci95": [_negated(high), _negated(low)], "p_value": entry.get("p_value"),
            "n": entry.get("n"), "outcome": TURNED.get(entry.get("outcome"), entry.get("outcome")),
            "ratio": {"value": inverted[0], "ci95": inverted[1:]}}


def pair_outcome(metric: str, entry: dict | None) -> str:
    """A paired entry's outcome (recomputed where it carries none, as `eval`'s own changes do); none without a test."""
    if not entry:
        return NO_DIFFERENCE
    return entry.get("outcome") or outcome(metric, entry)


def change_text(entry: dict | None, digits: int = 3, unit: str = "rows") -> str:
    """'paired change +0.050 [+0.020, +0.080] over the same 60 rows', or why there is none."""
    if not entry:
        return "no paired test (the two were not scored on the same rows)"
    if entry.get("absolute") is None:
        return "no paired change (the metric was not measured on both)"
    low, high = entry.get("ci95") or (None, None)
    bounds = "[-]" if low is None or high is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"
    over = f" over the same {entry['n']} {unit}" if entry.get("n") else " over the same rows"
    covers = ", an interval that covers 0" if pair_outcome("", entry) == NO_DIFFERENCE else ""
    return f"paired change {entry['absolute']:+.{digits}f} {bounds}{over}{covers}"


def best(metrics: dict, names: list[str], metric: str = "rougeL"):
    """(name, mean) of the best of `names` by `metric`, or None where none was measured."""
    scored = [(name, mean(metrics[name], metric)) for name in names if mean(metrics.get(name, {}), metric) is not None]
    return max(scored, key=lambda item: item[1]) if scored else None


def forgetting_tests(metrics: dict) -> list[tuple[str, str, dict]]:
    """(variant, what was measured, paired change with its outcome) for every probe task and suite of every tuned
    variant, against the base model on the same items."""
    tests = [(name, f"{task} (ROUGE-L)", change) for name, entry in metrics.items()
             for task, change in entry.get("forgetting_paired", {}).items()]
    for name, entry in metrics.items():
        for label, test in entry.get("suite_forgetting", {}).items():
            change = test["acc"]["change"]
            tests.append((name, f"{label} (accuracy)", change | {"n": test["acc"].get("n"), "outcome": outcome("acc", change)}))
    return tests


def forgetting_finding(metrics: dict):
    """Whether tuning lost held-out skills: a drop only where a paired test shows one."""
    tests = forgetting_tests(metrics)
    if not tests:
        return None
    drops = [test for test in tests if test[2]["outcome"] == "worse"]
    name, measured, change = min(drops or tests, key=lambda test: test[2]["absolute"] or 0)
    kind = "the largest drop" if (change["absolute"] or 0) < 0 else "the smallest change"
    largest = f"{kind}, <b>{html.escape(name)}</b> on {html.escape(measured)}: {change_text(change, unit='items')}"
    if drops:
        return False, (f"Held-out tasks suffer: {len(drops)} of {len(tests)} paired tests against the base model show a "
                       f"measurable drop; {largest}. Catastrophic forgetting shows as a drop here.")
    gains = sum(test[2]["outcome"] == "better" for test in tests)
    if gains:
        return True, (f"Held-out tasks are kept: none of {len(tests)} paired tests against the base model shows a drop, "
                      f"and {gains} show a gain; {largest}.")
    return None, (f"No measurable forgetting: none of {len(tests)} paired tests against the base model on held-out tasks "
                  f"shows a difference; {largest}.")


def repetition_finding(metrics: dict):
    """Whether any variant's outputs loop: the share saying one sentence three or more times."""
    shares = {name: mean(entry, "repetition") for name, entry in metrics.items() if mean(entry, "repetition") is not None}
    if not shares:
        return None
    looping = {name: share for name, share in shares.items() if share > 0}
    if not looping:
        return True, f"No output of any variant repeats a sentence three or more times ({len(shares)} variants checked)."
    worst = max(looping, key=looping.get)
    return False, (f"Some outputs loop: {len(looping)} of {len(shares)} variants have outputs that say one sentence three or more "
                   f"times, most often <b>{html.escape(worst)}</b> ({looping[worst]:.0%} of its outputs).")


# ---------------------------------------------------------------- tables


def _cell(entry: dict, metric: str, first: dict | None, first_name: str = "") -> str:
    value = entry.get(metric)
    if not isinstance(value, dict) or value.get("mean") is None:
        return "<td>-</td>"
    low, high = value["ci95"]
    text = f"{value['mean']:.4f}<br><span class='ci'>[{_bound(low)}, {_bound(high)}]</span>"
    base = mean(first or {}, metric)
    if first is not None and base is not None and entry is not first:
        change = value["mean"] - base
        relative = f", {change / abs(base):+.0%}" if base else ""
        paired = entry.get("paired", {}).get(first_name, {}).get(metric)
        text += f"<br><span class='{outcome_class(pair_outcome(metric, paired))}'>{change:+.4f}{relative}</span>"
    return f"<td>{text}</td>"


def _bound(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def quality_table(metrics: dict) -> str:
    columns = [m for m in (*ROUGE, "bleu", "exact_match", "toxicity", "repetition", "names_in_source") if any(m in e for e in metrics.values())]
    first_name = next(iter(metrics), "")
    first = metrics.get(first_name)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>{''.join(_cell(entry, m, first, first_name) for m in columns)}</tr>"
                   for name, entry in metrics.items())
    return (f"<table><tr><th>variant</th>{''.join(f'<th>{m}</th>' for m in columns)}</tr>{rows}</table>"
            f"<p class='ci'>mean, [95% bootstrap interval], change against {html.escape(first_name)}: green or red only where "
            "the paired 95% interval over the same rows excludes 0. names_in_source: the share of the names an output uses "
            "that occur in its input (reference-free).</p>")


def measured(cost: dict, key: str, spec: str, scale: float = 1, unit: str = "") -> str:
    """A cost as text, or '-' where it was not measured (a prompt has no training time)."""
    value = cost.get(key)
    return "-" if value is None else f"{value / scale:{spec}}{unit}"


def _time(cost: dict) -> str:
    """Training time for a trained variant, generation time (of the test set) for a prompted one, else '-'."""
    if cost.get("wall_time_s") is not None:
        return measured(cost, "wall_time_s", ".1f", unit=" s")
    return measured(cost, "generation_time_s", ".1f", unit=" s (generation)")


def cost_table(metrics: dict) -> str:
    def row(name: str, cost: dict) -> str:
        cells = [
            measured(cost, "trainable_params", ",.0f"), measured(cost, "trainable_share", ".2%"), _time(cost),
            measured(cost, "peak_memory_bytes", ",.1f", 2**20, " MiB"), measured(cost, "size_on_disk_bytes", ",.2f", 2**20, " MiB"),
        ]
        return f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"

    rows = "".join(row(name, entry.get("cost", {})) for name, entry in metrics.items())
    return ("<table><tr><th>variant</th><th>trainable parameters</th><th>share</th><th>training / generation time</th>"
            f"<th>peak memory</th><th>size on disk</th></tr>{rows}</table>"
            "<p class='ci'>'-': not measured. Prompted variants train nothing; their time is that of generating the test "
            "set, and their peak memory is not measured apart from the process's.</p>")


def forgetting_table(metrics: dict) -> str:
    tasks = sorted({t for e in metrics.values() for t in e.get("probes", {})})
    if not tasks:
        return "<p>No probes in this recipe.</p>"
    rows = ""
    for name, entry in metrics.items():
        if not entry.get("probes"):
            continue
        cells = "".join(f"<td>{entry['probes'][t]['rougeL']['mean']:.3f}{_forgetting_change(entry, t)}</td>" for t in tasks)
        rows += f"<tr><td>{html.escape(name)}</td>{cells}</tr>"
    return (f"<table><tr><th>variant</th>{''.join(f'<th>{t} (ROUGE-L)</th>' for t in tasks)}</tr>{rows}</table>"
            "<p class='ci'>(change against the base model), green or red only where the paired 95% interval over the same "
            "items excludes 0.</p>")


def _forgetting_change(entry: dict, task: str) -> str:
    if task not in entry.get("forgetting", {}):
        return ""
    klass = outcome_class(pair_outcome("rougeL", entry.get("forgetting_paired", {}).get(task)))
    return f" <span class='{klass}'>({entry['forgetting'][task]:+.3f})</span>"


def examples(variants: list, count: int = 4) -> str:
    loaded = {}
    for variant in variants:
        if variant.predictions and Path(variant.predictions).is_file():
            loaded[variant.name] = [json.loads(line) for line in Path(variant.predictions).read_text().splitlines()[:count]]
    if not loaded:
        return ""
    first = next(iter(loaded.values()))
    rows = ""
    for index, record in enumerate(first):
        prompt = record["prompt"].split("\n\n\n")[-1]  # without the in-context shots
        cells = "".join(f"<td class='text'>{html.escape(preds[index]['prediction']) if index < len(preds) else ''}</td>" for preds in loaded.values())
        rows += f"<tr><td class='text'>{html.escape(prompt)}</td><td class='text'>{html.escape(record.get('reference', ''))}</td>{cells}</tr>"
    header = "".join(f"<th>{html.escape(name)}</th>" for name in loaded)
    return f"<table><tr><th>prompt</th><th>reference</th>{header}</tr>{rows}</table>"


# ---------------------------------------------------------------- plots


def pyplot():
    """matplotlib's pyplot, drawing to files only (imported here: only the report stage draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figures_html(figures: list) -> str:
    return "".join(f"<div><img alt='{title}' src='data:image/png;base64,{data}'></div>" for title, data in filter(None, figures))


def png(figure, title: str) -> tuple[str, str]:
    """A finished figure as (title, base64 PNG); the figure is closed."""
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot().close(figure)
    return title, base64.b64encode(buffer.getvalue()).decode()


def _bars(names, means, lows, highs, ylabel, title):
    figure, axis = pyplot().subplots(figsize=(6, 3.6))
    errors = [[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]]
    axis.bar(range(len(names)), means, yerr=errors, capsize=4, color="#4c78a8")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    return png(figure, title)


def _metric_bars(metrics, metric, title):
    names = [n for n, e in metrics.items() if isinstance(e.get(metric), dict)]
    if not names:
        return None
    values = [metrics[n][metric] for n in names]
    return _bars(names, [v["mean"] for v in values], [v["ci95"][0] for v in values], [v["ci95"][1] for v in values], metric, title)


def rouge_bars(metrics: dict):
    return _metric_bars(metrics, "rougeL", "ROUGE-L per variant (95% interval)")


def toxicity_bars(metrics: dict):
    return _metric_bars(metrics, "toxicity", "Toxicity per variant (95% interval)")


def share_vs_rouge(metrics: dict):
    points = [(e["cost"]["trainable_share"], mean(e, "rougeL"), n) for n, e in metrics.items()
              if e.get("cost", {}).get("trainable_share") and mean(e, "rougeL") is not None]
    if not points:
        return None
    figure, axis = pyplot().subplots(figsize=(6, 3.6))
    for share, rouge, name in points:
        axis.scatter(share * 100, rouge, color="#f58518")
        axis.annotate(name, (share * 100, rouge), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (%)")
    axis.set_ylabel("ROUGE-L")
    return png(figure, "Trainable share against quality")


def forgetting_bars(metrics: dict):
    rows = [(n, sum(e["forgetting"].values()) / len(e["forgetting"])) for n, e in metrics.items() if e.get("forgetting")]
    if not rows:
        return None
    figure, axis = pyplot().subplots(figsize=(6, 3.6))
    axis.bar([n for n, _ in rows], [v for _, v in rows], color=["#b42318" if v < 0 else "#1a7f37" for _, v in rows])
    axis.axhline(0, color="#333", linewidth=0.8)
    axis.set_ylabel("probe ROUGE-L change")
    axis.tick_params(axis="x", rotation=30)
    return png(figure, "Forgetting: change on held-out tasks")
