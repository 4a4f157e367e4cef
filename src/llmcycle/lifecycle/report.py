"""The run report: one self-contained HTML file (plots embedded as PNG) comparing every variant of a recipe.

It states what the course teaches and whether this run shows it, with the numbers, rather than hiding a
result that differs (a model this small may not profit from few-shot prompting, for example).
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from ..evaluate.metrics import verdict
from ..outputs import atomic_open
from .report_stages import cot_section, holistic_section, rag_section, suites_section

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


def write_report(path: Path, recipe, variants: list, metrics: dict) -> None:
    with atomic_open(path) as handle:
        handle.write(html_page(f"llmcycle {recipe.name}", report_parts(recipe, variants, metrics)))


def html_page(title: str, parts: list[str]) -> str:
    """One self-contained HTML file: the style inline, the plots embedded."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def report_parts(recipe, variants: list, all_metrics: dict, heading: str = "h1") -> list[str]:
    """The report of one model's run. Variants of the rag stage answer other questions than the test data, so
    they are shown in their own section only, never in a column beside the test data's scores."""
    rag_names = {v.name for v in variants if v.kind == "rag"}
    metrics = {name: entry for name, entry in all_metrics.items() if name not in rag_names}
    variants = [v for v in variants if v.kind != "rag"]
    return [
        f"<{heading}>llmcycle: {html.escape(recipe.name)}</{heading}>",
        f"<p class='sub'>model {html.escape(recipe.model)} &middot; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        f"<p>{html.escape(recipe.description)}</p>" if recipe.description else "",
        "<h2>What each step bought</h2>", findings(metrics, variants),
        "<h2>Quality</h2>", quality_table(metrics),
        "<h2>Cost</h2>", cost_table(metrics),
        "<div class='grid'>", plots(metrics, variants), "</div>",
        "<h2>Forgetting: held-out tasks</h2>", forgetting_table(metrics),
        cot_section(metrics), suites_section(metrics), holistic_section(metrics), rag_section(all_metrics, sorted(rag_names)),
        "<h2>Outputs side by side</h2>", examples(variants),
    ]


def _mean(entry: dict, metric: str) -> float | None:
    value = entry.get(metric)
    return value["mean"] if isinstance(value, dict) and "mean" in value else None


def _by_kind(variants: list, kind: str) -> list:
    return [v for v in variants if v.kind == kind]


# ---------------------------------------------------------------- findings


def findings(metrics: dict, variants: list) -> str:
    items = [f for f in (_tuning_beats_prompting(metrics, variants), *_each_method(metrics, variants), _lora_near_full(metrics),
                         _shots_help(metrics), *_alignment_detoxifies(metrics, variants), _forgetting(metrics), _repetition(metrics)) if f]
    return "".join(f"<div class='finding{'' if ok else ' no'}'>{'&#10003;' if ok else '&#9888;'} {text}</div>" for ok, text in items)


def _best(metrics: dict, names: list[str], metric: str = "rougeL"):
    scored = [(name, _mean(metrics[name], metric)) for name in names if _mean(metrics.get(name, {}), metric) is not None]
    return max(scored, key=lambda item: item[1]) if scored else None


def _tuning_beats_prompting(metrics, variants):
    prompted = _best(metrics, [v.name for v in _by_kind(variants, "prompting")])
    tuned = _best(metrics, [v.name for v in _by_kind(variants, "finetune")])
    if not prompted or not tuned:
        return None
    low = metrics[tuned[0]]["rougeL"]["ci95"][0]
    high = metrics[prompted[0]]["rougeL"]["ci95"][1]
    ok = low > high
    return ok, (f"Fine-tuning {'beats' if ok else 'does not clearly beat'} prompting: best tuned variant <b>{tuned[0]}</b> "
                f"ROUGE-L {tuned[1]:.3f} against the best prompt <b>{prompted[0]}</b> {prompted[1]:.3f} "
                f"({'the 95% intervals do not overlap' if ok else 'the 95% intervals overlap'}).")


METHOD_NOTES = {
    "prompt-tuning": " Prompt tuning needs scale: Lester et al. (2021) find it matches full fine-tuning only near 10B "
                     "parameters, and lags far behind on small models, as here.",
    "prefix-tuning": " Prefix tuning, like prompt tuning, trains few parameters and is known to lag on small models.",
}


def _each_method(metrics, variants) -> list:
    """A finding for every tuned variant against zero-shot prompting, including those that did not help."""
    zero = _mean(metrics.get("zero-shot", {}), "rougeL")
    if zero is None:
        return []
    found = []
    for variant in _by_kind(variants, "finetune"):
        entry = metrics.get(variant.name, {})
        tuned = _mean(entry, "rougeL")
        if tuned is None:
            continue
        low, high = entry["rougeL"]["ci95"]
        zero_low, zero_high = metrics["zero-shot"]["rougeL"]["ci95"]
        verdict_text = "above" if low > zero_high else "below" if high < zero_low else "within the interval of"
        method = entry.get("cost", {}).get("method", variant.name)
        note = METHOD_NOTES.get(method, "") if verdict_text != "above" else ""
        found.append((verdict_text == "above", f"<b>{html.escape(variant.name)}</b> ({html.escape(str(method))}) scores ROUGE-L "
                      f"{tuned:.3f} [{low:.3f}, {high:.3f}], {verdict_text} zero-shot prompting ({zero:.3f}).{note}"))
    return found


def _lora_near_full(metrics):
    lora = next((n for n in metrics if n.lower().startswith("lora") and "+" not in n), None)
    if "full" not in metrics or lora is None or _mean(metrics["full"], "rougeL") in (None, 0):
        return None
    ratio = _mean(metrics[lora], "rougeL") / _mean(metrics["full"], "rougeL")
    share = metrics[lora]["cost"].get("trainable_share", 0)
    ok = ratio >= 0.9
    return ok, (f"LoRA {'comes close to' if ok else 'falls short of'} full fine-tuning: {ratio:.0%} of its ROUGE-L "
                f"while training {share:.2%} of the parameters.")


def _shots_help(metrics):
    zero, more = metrics.get("zero-shot"), [n for n in metrics if n.endswith("-shot") and n not in ("zero-shot",)]
    if not zero or not more:
        return None
    best = _best(metrics, more)
    ok = best[1] > _mean(zero, "rougeL") + 0.01  # a clear gain, not rounding
    return ok, (f"In-context examples {'help' if ok else 'do not help this model'}: best {best[0]} ROUGE-L {best[1]:.3f} "
                f"against zero-shot {_mean(zero, 'rougeL'):.3f}." + ("" if ok else " A model this small has little in-context learning to draw on; the course's claim is about large models."))


def _alignment_detoxifies(metrics, variants) -> list:
    """A finding per aligned variant (PPO or DPO): its toxicity against the variant it started from."""
    found = []
    for variant in _by_kind(variants, "align"):
        name = variant.name
        source = metrics.get(name, {}).get("cost", {}).get("from", name.split("+")[0])
        source = source if source in metrics and source != name else None
        if source is None or "toxicity" not in metrics.get(name, {}) or "toxicity" not in metrics[source]:
            continue
        method = str(metrics[name].get("cost", {}).get("method", "alignment")).upper()
        before, after = _mean(metrics[source], "toxicity"), _mean(metrics[name], "toxicity")
        ok = after < before
        rouge = (f"; ROUGE-L {_mean(metrics[source], 'rougeL'):.3f} -> {_mean(metrics[name], 'rougeL'):.3f}"
                 if _mean(metrics[name], "rougeL") is not None and _mean(metrics[source], "rougeL") is not None else "")
        found.append((ok, f"{method} {'lowers' if ok else 'does not lower'} toxicity: {html.escape(source)} {before:.4f} -> "
                          f"{html.escape(name)} {after:.4f}{rouge}."))
    return found


def _forgetting(metrics):
    changes = {name: entry["forgetting"] for name, entry in metrics.items() if entry.get("forgetting")}
    if not changes:
        return None
    worst = min(changes, key=lambda n: min(changes[n].values()))
    drop = min(changes[worst].values())
    ok = drop > -0.05
    return ok, (f"Held-out tasks {'are kept' if ok else 'suffer'}: the largest drop in probe ROUGE-L is {drop:+.3f} ({worst}). "
                "Catastrophic forgetting shows as a drop here.")


def _repetition(metrics):
    """Whether any variant's outputs loop: the share saying one sentence three or more times."""
    shares = {name: _mean(entry, "repetition") for name, entry in metrics.items() if _mean(entry, "repetition") is not None}
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
    base = _mean(first or {}, metric)
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


def _measured(cost: dict, key: str, spec: str, scale: float = 1, unit: str = "") -> str:
    """A cost as text, or '-' where it was not measured (a prompt has no training time)."""
    value = cost.get(key)
    return "-" if value is None else f"{value / scale:{spec}}{unit}"


def _time(cost: dict) -> str:
    """Training time for a trained variant, generation time (of the test set) for a prompted one, else '-'."""
    if cost.get("wall_time_s") is not None:
        return _measured(cost, "wall_time_s", ".1f", unit=" s")
    return _measured(cost, "generation_time_s", ".1f", unit=" s (generation)")


def cost_table(metrics: dict) -> str:
    def row(name: str, cost: dict) -> str:
        cells = [
            _measured(cost, "trainable_params", ",.0f"), _measured(cost, "trainable_share", ".2%"), _time(cost),
            _measured(cost, "peak_memory_bytes", ",.1f", 2**20, " MiB"), _measured(cost, "size_on_disk_bytes", ",.2f", 2**20, " MiB"),
        ]
        return f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"

    rows = "".join(row(name, entry.get("cost", {})) for name, entry in metrics.items())
    return ("<table><tr><th>variant</th><th>trainable parameters</th><th>share</th><th>training / generation time</th>"
            f"<th>peak memory</th><th>size on disk</th></tr>{rows}</table>"
            "<p class='ci'>'-': not measured. Prompted variants train nothing; their time is that of generating the test "
            "set, and their peak memory is not measured apart from the process's.</p>" + deploy_table(metrics))


def deploy_table(metrics: dict) -> str:
    """Each quantised variant against the float32 form of its source, measured in the same run (llmcycle quantize --compare)."""
    def row(name: str, entry: dict) -> str:
        cost, source = entry["cost"], metrics.get(name.rsplit("+", 1)[0], {})
        quality = next((m for m in ("rougeL", "bleu", "exact_match", "toxicity") if _mean(entry, m) is not None), None)
        before, after = (_mean(source, quality), _mean(entry, quality)) if quality else (None, None)
        paired = cost.get("quality_change", {}).get(quality)
        change = (f"{quality} {after:.4f}: {paired['absolute']:+.4f} [{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}] against float32"
                  if paired else "-" if before is None or after is None else f"{quality} {before:.4f} &rarr; {after:.4f} ({after - before:+.4f})")
        cells = [
            html.escape(cost.get("method", "-")),
            f"{cost['size_on_disk_bytes'] / 2**20:,.2f} MiB ({cost['float32_bytes'] / cost['size_on_disk_bytes']:.2f}x smaller)",
            f"{_measured(cost, 'bytes_per_param', '.3f')} ({_measured(cost, 'planned_bytes_per_param', '.3f')})",
            _measured(cost, "load_s", ".2f", unit=" s"),
            f"{_measured(cost, 'tokens_per_s', ',.1f')} ({_measured(cost, 'float32_tokens_per_s', ',.1f')})",
            f"{_measured(cost, 'peak_memory_bytes', ',.1f', 2**20)} ({_measured(cost, 'float32_peak_memory_bytes', ',.1f', 2**20)}) MiB",
            change,
        ]
        return f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"

    rows = "".join(row(name, entry) for name, entry in metrics.items() if "float32_bytes" in entry.get("cost", {}))
    if not rows:
        return ""
    return ("<h3>Deployment: what each byte saved cost</h3><table><tr><th>variant</th><th>method</th><th>size on disk</th>"
            "<th>bytes / parameter (planned)</th><th>load time</th><th>output tokens/s (float32)</th><th>peak memory (float32)</th>"
            f"<th>quality: change [paired 95% interval]</th></tr>{rows}</table><p class='ci'>measured against the float32 form of the "
            "source in the same run, on the same rows; peak memory is the rise during load and generation (CUDA allocations, or "
            "resident memory on a CPU)</p>")


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


def plots(metrics: dict, variants: list) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [_rouge_bars(plt, metrics), _loss_curves(plt, variants), _share_vs_rouge(plt, metrics),
               _toxicity_bars(plt, metrics), _forgetting_bars(plt, metrics)]
    return "".join(f"<div><img alt='{title}' src='data:image/png;base64,{data}'></div>" for title, data in filter(None, figures))


def _png(plt, figure, title: str) -> tuple[str, str]:
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return title, base64.b64encode(buffer.getvalue()).decode()


def _bars(plt, names, means, lows, highs, ylabel, title):
    figure, axis = plt.subplots(figsize=(6, 3.6))
    errors = [[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]]
    axis.bar(range(len(names)), means, yerr=errors, capsize=4, color="#4c78a8")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    return _png(plt, figure, title)


def _metric_bars(plt, metrics, metric, title):
    names = [n for n, e in metrics.items() if isinstance(e.get(metric), dict)]
    if not names:
        return None
    values = [metrics[n][metric] for n in names]
    return _bars(plt, names, [v["mean"] for v in values], [v["ci95"][0] for v in values], [v["ci95"][1] for v in values], metric, title)


def _rouge_bars(plt, metrics):
    return _metric_bars(plt, metrics, "rougeL", "ROUGE-L per variant (95% interval)")


def _toxicity_bars(plt, metrics):
    return _metric_bars(plt, metrics, "toxicity", "Toxicity per variant (95% interval)")


def _loss_curves(plt, variants):
    runs = [v for v in variants if v.kind == "finetune" and v.log and Path(v.log).is_file()]
    if not runs:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for variant in runs:
        records = [json.loads(line) for line in Path(variant.log).read_text().splitlines()]
        axis.plot([r["step"] for r in records], [r["loss"] for r in records], label=f"{variant.name} train")
        evals = [r for r in records if "eval_loss" in r]
        if evals:
            axis.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "--", marker="o", label=f"{variant.name} validation")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    return _png(plt, figure, "Training and validation loss")


def _share_vs_rouge(plt, metrics):
    points = [(e["cost"]["trainable_share"], _mean(e, "rougeL"), n) for n, e in metrics.items()
              if e.get("cost", {}).get("trainable_share") and _mean(e, "rougeL") is not None]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for share, rouge, name in points:
        axis.scatter(share * 100, rouge, color="#f58518")
        axis.annotate(name, (share * 100, rouge), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (%)")
    axis.set_ylabel("ROUGE-L")
    return _png(plt, figure, "Trainable share against quality")


def _forgetting_bars(plt, metrics):
    rows = [(n, sum(e["forgetting"].values()) / len(e["forgetting"])) for n, e in metrics.items() if e.get("forgetting")]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.bar([n for n, _ in rows], [v for _, v in rows], color=["#b42318" if v < 0 else "#1a7f37" for _, v in rows])
    axis.axhline(0, color="#333", linewidth=0.8)
    axis.set_ylabel("probe ROUGE-L change")
    axis.tick_params(axis="x", rotation=30)
    return _png(plt, figure, "Forgetting: change on held-out tasks")
