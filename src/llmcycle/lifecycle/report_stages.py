"""Report sections of the later stages: benchmark suites with their forgetting test, and the HELM-style view.

Each returns "" when the run has nothing for it, so a recipe without suites shows no empty section.
"""

from __future__ import annotations

import html

from ..evaluate.metrics import verdict


def _interval(summary: dict | None, digits: int = 3) -> str:
    if not isinstance(summary, dict) or "mean" not in summary:
        return "-"
    low, high = summary["ci95"]
    return f"{summary['mean']:.{digits}f}<br><span class='ci'>[{low:.{digits}f}, {high:.{digits}f}]</span>"


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
        change = (f"<span class='{verdict('acc', delta['absolute'])}'>{delta['absolute']:+.3f}</span> "
                  f"<span class='ci'>[{low:+.3f}, {high:+.3f}], p={delta['p_value']:.3g}</span><br>"
                  f"forgot {test['forgot']}, learned {test['learned']}: {mark}")
    return f"<td>{_interval(suite.get('acc'))}</td><td>{_interval(suite.get('acc_norm'))}</td><td>{change}</td>"


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
        rows = "".join(f"<tr><td>{title}</td>{''.join(f'<td>{_interval(view.get(key), 4)}</td>' for view in views)}</tr>"
                       for key, title in HOLISTIC_ROWS)
        speed = "".join(f"<td>{_interval(view.get('efficiency', {}).get('tokens_per_s'), 1)}</td>" for view in views)
        parts.append(f"<h3>{html.escape(label)}</h3><table><tr><th>aspect</th>"
                     + "".join(f"<th>{html.escape(n)}</th>" for n in names) + f"</tr>{rows}"
                     f"<tr><td>efficiency: generated tokens/s</td>{speed}</tr></table>")
    if not parts:
        return ""
    return ("<h2>Holistic view</h2><p>Accuracy alone hides how sure a model is, how it holds up to typos and casing, what "
            "it says and how fast: each aspect measured on the same suite, with its 95% interval.</p>" + "".join(parts))


def rag_section(metrics: dict, names: list[str]) -> str:
    """The rag stage's variants (each earlier variant with retrieval, and a closed-book fine-tune on the docs'
    other questions): answers, retrieval, misses and what each cost, on the stage's questions."""
    rows, keys = [], sorted({key for n in names for key in metrics.get(n, {}) if key.startswith(("hit@", "answerable@"))})
    for name in sorted(names, key=lambda n: ("+" in n or n == "rag", n)):
        entry, cost = metrics.get(name, {}), metrics.get(name, {}).get("cost", {})
        closed = cost.get("closed_book_exact_match", (entry.get("exact_match") or {}).get("mean") if "rag_index_seconds" not in cost else None)
        cells = [_interval(entry.get(m)) for m in ("exact_match", "f1", "rougeL", *keys)]
        misses = f"{cost['rag_misses_retrieval']} / {cost.get('rag_misses_generation', '-')}" if "rag_misses_retrieval" in cost else "-"
        timing = (f"{cost['rag_index_seconds']:.1f} s index, {cost.get('rag_retrieval_ms_per_question', 0):.0f} + "
                  f"{cost.get('rag_generation_ms_per_question', 0):.0f} ms a question, {cost.get('rag_prompt_tokens', 0):.0f} prompt tokens"
                  if "rag_index_seconds" in cost else f"{cost['wall_time_s']:.1f} s training, closed book" if "wall_time_s" in cost else "-")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{'-' if closed is None else f'{closed:.3f}'}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{misses}</td><td>{timing}</td></tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("exact match", "F1", "ROUGE-L", *keys))
    return ("<h2>Retrieval against fine-tuning</h2><table><tr><th>variant</th><th>exact match without retrieval</th>"
            f"{head}<th>misses: retrieval / generation</th><th>cost</th></tr>{''.join(rows)}</table>"
            "<p class='ci'>The same questions with and without retrieval (docs-ft: fine-tuned without retrieval on the "
            "documentation's other questions). A retrieval miss: the gold answer was not in the retrieved text "
            "(answerable@k); a generation miss: it was, and the answer was still wrong. '-': not measured.</p>")


def cot_section(metrics: dict) -> str:
    """Direct answers against chain-of-thought, on the baseline's cot data."""
    found = [(name, entry["chain_of_thought"]) for name, entry in metrics.items() if entry.get("chain_of_thought")]
    if not found:
        return ""
    cot = found[0][1]
    rows = "".join(
        f"<tr><td>{mode}</td><td>{_interval(cot[mode].get('accuracy'))}</td><td>{cot[mode].get('answered', 0):.0%}</td>"
        f"<td>{_change(cot[mode].get('accuracy', {}).get('change'))}</td></tr>" for mode in ("direct", "cot", "self-consistency") if mode in cot)
    return (f"<h2>Chain-of-thought</h2><p>{cot['shots']}-shot prompts on {html.escape(str(cot['task']))} word problems: the "
            "same queries and shots answered directly, and with worked rationales in the shots so the model reasons "
            f"before answering ('The answer is N.'). The answer extracted from each output is scored.</p><table><tr><th>mode</th>"
            f"<th>accuracy</th><th>answered</th><th>change against direct</th></tr>{rows}</table>"
            "<p class='ci'>answered: the share of outputs an answer could be extracted from.</p>")


def _change(change: dict | None) -> str:
    if not change:
        return "-"
    low, high = change["ci95"]
    klass = verdict("accuracy", change["absolute"]) if low > 0 or high < 0 else ""  # coloured where the interval clears 0
    return f"<span class='{klass}'>{change['absolute']:+.3f}</span> <span class='ci'>[{low:+.3f}, {high:+.3f}]</span>"
