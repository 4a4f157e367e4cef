"""The run report's shared parts: the page, the tables and plots every run has, and the helpers the stages use
for the parts they add (lifecycle/stages/report.py puts the report together from both).

The report states what the course teaches and whether this run shows it, with the numbers, rather than hiding a
result that differs (a model this small may not profit from few-shot prompting, for example). Every part takes
metrics.json's entries (and the variants), so the report reads only what was measured.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..evaluate.metrics import verdict

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
    if not isinstance(summary, dict) or "mean" not in summary:
        return "-"
    low, high = summary["ci95"]
    return f"{summary['mean']:.{digits}f}<br><span class='ci'>[{low:.{digits}f}, {high:.{digits}f}]</span>"


# ---------------------------------------------------------------- findings


def render_findings(found: list) -> str:
    """Findings as the report shows them: a tick where the course's claim held in this run, a warning where not."""
    return "".join(f"<div class='finding{'' if ok else ' no'}'>{'&#10003;' if ok else '&#9888;'} {text}</div>" for ok, text in found)


def best(metrics: dict, names: list[str], metric: str = "rougeL"):
    """(name, mean) of the best of `names` by `metric`, or None where none was measured."""
    scored = [(name, mean(metrics[name], metric)) for name in names if mean(metrics.get(name, {}), metric) is not None]
    return max(scored, key=lambda item: item[1]) if scored else None


def forgetting_finding(metrics: dict):
    changes = {name: entry["forgetting"] for name, entry in metrics.items() if entry.get("forgetting")}
    if not changes:
        return None
    worst = min(changes, key=lambda n: min(changes[n].values()))
    drop = min(changes[worst].values())
    ok = drop > -0.05
    return ok, (f"Held-out tasks {'are kept' if ok else 'suffer'}: the largest drop in probe ROUGE-L is {drop:+.3f} ({worst}). "
                "Catastrophic forgetting shows as a drop here.")


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


def _cell(entry: dict, metric: str, first: dict | None) -> str:
    value = entry.get(metric)
    if not isinstance(value, dict):
        return "<td>-</td>"
    text = f"{value['mean']:.4f}<br><span class='ci'>[{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]</span>"
    base = mean(first or {}, metric)
    if first is not None and base is not None and entry is not first:
        change = value["mean"] - base
        relative = f", {change / abs(base):+.0%}" if base else ""
        text += f"<br><span class='{verdict(metric, change)}'>{change:+.4f}{relative}</span>"
    return f"<td>{text}</td>"


def quality_table(metrics: dict) -> str:
    columns = [m for m in (*ROUGE, "bleu", "exact_match", "toxicity", "repetition") if any(m in e for e in metrics.values())]
    first = next(iter(metrics.values()), None)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>{''.join(_cell(entry, m, first) for m in columns)}</tr>" for name, entry in metrics.items())
    return (f"<table><tr><th>variant</th>{''.join(f'<th>{m}</th>' for m in columns)}</tr>{rows}</table>"
            f"<p class='ci'>mean, [95% bootstrap interval], change against {html.escape(next(iter(metrics), ''))}</p>")


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
        cells = "".join(f"<td>{entry['probes'][t]['rougeL']['mean']:.3f}"
                        + (f" <span class='{verdict('rougeL', entry['forgetting'][t])}'>({entry['forgetting'][t]:+.3f})</span>" if t in entry.get("forgetting", {}) else "")
                        + "</td>" for t in tasks)
        rows += f"<tr><td>{html.escape(name)}</td>{cells}</tr>"
    return f"<table><tr><th>variant</th>{''.join(f'<th>{t} (ROUGE-L)</th>' for t in tasks)}</tr>{rows}</table>"


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
