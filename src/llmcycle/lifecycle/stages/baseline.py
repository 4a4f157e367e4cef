"""The `baseline` stage: the model as it comes, prompted zero-, one- and few-shot, and with chain-of-thought
where a task has worked answers.

```yaml
- baseline: {shots: [0, 1, 3]}
- baseline: {shots: [0, 1, 3], cot: {data: {task: arithmetic, rows: 40, seed: 15}, shots: 3, self_consistency: 5}}
```
`cot` runs `llmcycle prompt --cot` on its own data (rows with a rationale and an answer): the same queries and
shots answered directly and after reasoning (and, with `self_consistency: K`, the majority answer of K sampled
reasoning paths), accuracy of the extracted answer with the paired change. Its result
rides on the prompting variant with that many shots (else the last one) as `chain_of_thought`, because the
summaries of the test data cannot be scored by an extracted answer.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ... import config as configs
from ...errors import UserError
from ...evaluate.compare import NO_DIFFERENCE, outcome
from ...generate.prompting import (
    CotRequest,
    cot_dataset,
    prompt_dataset,
    shots_label,
    shots_path,
)
from ...models import ModelOptions, locate
from ...outputs import folder_bytes
from ..core import BASE, Run, Stage, Step, Variant, check_data_spec
from ..report import best, change_text, held, interval, mean, oriented_pair, outcome_class, pair_outcome

NAME = "baseline"


COT_NUMBERS = {"shots": 0, "max_new_tokens": 1, "self_consistency": 0}
"""The cot spec's numbers and the least each may be."""


@dataclass
class BaselineOptions:
    shots: list[int] = field(default_factory=lambda: [0, 1, 3])
    """Shot counts to compare."""
    cot: dict | None = None
    """Chain-of-thought on other data: {data: {task: arithmetic, rows, seed} or a file, shots: K, max_new_tokens: N,
    self_consistency: K (sampled reasoning paths, majority answer; 0 = none)}."""

    def validate(self, where: str = "baseline") -> None:
        if self.cot is None:
            return
        if not isinstance(self.cot, dict) or "data" not in self.cot or set(self.cot) - {"data", *COT_NUMBERS}:
            raise UserError(f"{where}: cot is {{data: {{task: arithmetic, rows: N, seed: S}} or a file, shots: K, "
                            "max_new_tokens: N, self_consistency: K}")
        for key, least in COT_NUMBERS.items():
            if key in self.cot and (not isinstance(self.cot[key], int) or isinstance(self.cot[key], bool) or self.cot[key] < least):
                raise UserError(f"{where}: cot.{key} must be a whole number of at least {least}")


def check_baseline(options: dict, where: str, names: set, source: str) -> None:
    where = f"{where} (baseline)"
    baseline = BaselineOptions(**configs.checked(BaselineOptions, options, where))
    baseline.validate(where)
    if baseline.cot is not None:
        check_data_spec(baseline.cot["data"], source or where, f"{where} cot.data")


def run_baseline(run: Run, step: Step, folder: Path) -> None:
    options = BaselineOptions(**configs.checked(BaselineOptions, step.options, "baseline"))
    shots, timings = options.shots, {}
    results = prompt_dataset(ModelOptions(run.recipe.model), run.data_options(run.test), ",".join(str(k) for k in shots), run.settings(),
                             str(folder / "predictions.jsonl"), shot_data=run.data_options(run.train), truncate_shots=True,
                             metrics=run.recipe.metrics, timings=timings)
    several_beyond_one = sum(k > 1 for k in shots) > 1
    base_size = folder_bytes(locate(run.recipe.model).base)
    names = []
    for k in shots:
        label = shots_label(k)
        name = label if k < 2 or several_beyond_one else "few-shot"
        names.append(name)
        run.variants[name] = Variant(name, run.recipe.model, NAME, metrics=results.get(label, {}),
                                     cost={"trainable_params": 0, "generation_time_s": timings.get(label), "size_on_disk_bytes": base_size},
                                     predictions=shots_path(str(folder / "predictions.jsonl"), k, len(shots) > 1))
    if options.cot is not None:
        cot_shots = options.cot.get("shots", 3)
        name = names[shots.index(cot_shots)] if cot_shots in shots else names[-1]
        run.variants[name].chain_of_thought = _chain_of_thought(run, options.cot, folder)


def _chain_of_thought(run: Run, cot: dict, folder: Path) -> dict:
    """Direct answers against reasoning first, on the cot data: accuracy, share answered, the paired change."""
    data = run.data_file("cot", cot["data"])
    tokens = int(cot.get("max_new_tokens", 64))
    settings = replace(run.settings(), max_new_tokens=min(tokens, 8) if run.smoke else tokens)
    started = time.perf_counter()
    results = cot_dataset(ModelOptions(run.recipe.model), run.data_options(data), settings, str(folder / "cot.jsonl"),
                          CotRequest(int(cot.get("shots", 3)), self_consistency=int(cot.get("self_consistency", 0)),
                                     truncate_shots=True))
    task = cot["data"].get("task") if isinstance(cot["data"], dict) else Path(str(cot["data"])).stem
    return {"task": task, "shots": int(cot.get("shots", 3)), "generation_time_s": time.perf_counter() - started,
            "predictions": str(folder / "cot.cot.jsonl"), **results}


def chain_of_thought_entry(variant: Variant, run: Run) -> dict:
    return {"chain_of_thought": variant.chain_of_thought} if variant.chain_of_thought else {}


# ---------------------------------------------------------------- what it adds to the report


def baseline_findings(metrics: dict, variants: list) -> list:
    return shots_help(metrics, variants) + chain_of_thought_pays(metrics, variants)


SHOTS_WORDS = {"better": "help this model", "worse": "make this model worse", NO_DIFFERENCE: "make no measurable difference to this model"}


def shots_help(metrics: dict, variants: list) -> list:
    """The best prompt with in-context examples against zero-shot, by the paired test on the same rows."""
    prompted = [v.name for v in variants if v.stage == NAME and v.name != "zero-shot"]
    top = best(metrics, prompted)
    if mean(metrics.get("zero-shot", {}), "rougeL") is None or top is None:
        return []
    pair = oriented_pair(metrics, top[0], "zero-shot", "rougeL")
    result = pair_outcome("rougeL", pair)
    caveat = "" if result == "better" else (" A model this small has little in-context learning to draw on; the course's claim "
                                            "is about large models.")
    return [(held(result), f"In-context examples {SHOTS_WORDS[result]}: best <b>{html.escape(top[0])}</b> ROUGE-L {top[1]:.3f} "
                           f"against zero-shot {mean(metrics['zero-shot'], 'rougeL'):.3f}, {change_text(pair)}.{caveat}")]


COT_WORDS = {"better": "pays off", "worse": "makes answers worse", NO_DIFFERENCE: "makes no measurable difference"}


def chain_of_thought_pays(metrics: dict, variants: list) -> list:
    """Reasoning first against answering directly, on the cot data: the paired change in accuracy (eval --compare's)."""
    cot = next((entry["chain_of_thought"] for entry in metrics.values() if entry.get("chain_of_thought")), None)
    if not cot or "cot" not in cot or "direct" not in cot:
        return []
    n = cot["direct"]["accuracy"].get("n")
    change = _with_rows(cot["cot"]["accuracy"].get("change"), n)
    result = pair_outcome("accuracy", change)
    text = (f"Chain-of-thought {COT_WORDS[result]}: accuracy {cot['cot']['accuracy']['mean']:.3f} reasoning first against "
            f"{cot['direct']['accuracy']['mean']:.3f} answering directly on {html.escape(str(cot['task']))} word problems, "
            f"{change_text(change, unit='problems')}")
    consistency = cot.get("self-consistency", {}).get("accuracy")
    if consistency:
        text += f"; self-consistency {consistency['mean']:.3f}, {change_text(_with_rows(consistency.get('change'), n), unit='problems')}"
    return [(held(result), text + ".")]


def _with_rows(change: dict | None, rows: int | None) -> dict | None:
    """A change against direct answers (prompt --cot's, which leaves the count of problems to the accuracy) with it."""
    return change and {**change, "n": rows}


def cot_section(metrics: dict, variants: list) -> str:
    """Direct answers against chain-of-thought, on the baseline's cot data."""
    found = [(name, entry["chain_of_thought"]) for name, entry in metrics.items() if entry.get("chain_of_thought")]
    if not found:
        return ""
    cot = found[0][1]
    rows = "".join(
        f"<tr><td>{mode}</td><td>{interval(cot[mode].get('accuracy'))}</td><td>{cot[mode].get('answered', 0):.0%}</td>"
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
    klass = outcome_class(outcome("accuracy", change))  # coloured where the interval clears 0
    return f"<span class='{klass}'>{change['absolute']:+.3f}</span> <span class='ci'>[{low:+.3f}, {high:+.3f}]</span>"


BASELINE = Stage(NAME, check_baseline, run_baseline, variant_role=BASE, metrics_entry=chain_of_thought_entry,
                 findings=baseline_findings, section=cot_section)
