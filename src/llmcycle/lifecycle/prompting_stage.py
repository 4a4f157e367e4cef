"""The `baseline` stage of a recipe: the model as it comes, prompted zero-, one- and few-shot, and with
chain-of-thought where a task has worked answers.

```yaml
- baseline: {shots: [0, 1, 3]}
- baseline: {shots: [0, 1, 3], cot: {data: {task: arithmetic, rows: 40, seed: 15}, shots: 3}}
```
`cot` runs `llmcycle prompt --cot` on its own data (rows with a rationale and an answer): the same queries and
shots answered directly and after reasoning, accuracy of the extracted answer with the paired change. Its result
rides on the prompting variant with that many shots (else the last one) as `chain_of_thought`, because the
summaries of the test data cannot be scored by an extracted answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import config as configs
from ..errors import UserError


@dataclass
class BaselineOptions:
    shots: list[int] = field(default_factory=lambda: [0, 1, 3])
    """Shot counts to compare."""
    cot: dict | None = None
    """Chain-of-thought on other data: {data: {task: arithmetic, rows, seed} or a file, shots: K, max_new_tokens: N}."""

    def validate(self, where: str = "baseline") -> None:
        if self.cot is None:
            return
        if not isinstance(self.cot, dict) or "data" not in self.cot or set(self.cot) - {"data", "shots", "max_new_tokens"}:
            raise UserError(f"{where}: cot is {{data: {{task: arithmetic, rows: N, seed: S}} or a file, shots: K, max_new_tokens: N}}")
        for key in ("shots", "max_new_tokens"):
            if key in self.cot and (not isinstance(self.cot[key], int) or self.cot[key] < (0 if key == "shots" else 1)):
                raise UserError(f"{where}: cot.{key} must be a whole number of at least {0 if key == 'shots' else 1}")


def check_baseline(options: dict, where: str, source: str) -> None:
    from .recipes import _check_data_spec

    baseline = BaselineOptions(**configs.checked(BaselineOptions, options, where))
    baseline.validate(where)
    if baseline.cot is not None:
        _check_data_spec(baseline.cot["data"], source or where, f"{where} cot.data")


def run_baseline(run, step, folder: Path) -> None:
    from ..generate.prompting import prompt_dataset, shots_label, shots_path
    from ..models import ModelOptions, locate
    from .recipes import Variant, _size_on_disk

    options = BaselineOptions(**configs.checked(BaselineOptions, step.options, "baseline"))
    shots, timings = options.shots, {}
    results = prompt_dataset(ModelOptions(run.recipe.model), run.data_options(run.test), ",".join(str(k) for k in shots), run.settings(),
                             str(folder / "predictions.jsonl"), shot_data=run.data_options(run.train), truncate_shots=True,
                             metrics=run.recipe.metrics, timings=timings)
    several_beyond_one = sum(k > 1 for k in shots) > 1
    base_size = _size_on_disk(locate(run.recipe.model).base)
    names = []
    for k in shots:
        label = shots_label(k)
        name = label if k < 2 or several_beyond_one else "few-shot"
        names.append(name)
        run.variants[name] = Variant(name, run.recipe.model, "prompting", metrics=results.get(label, {}),
                                     cost={"trainable_params": 0, "generation_time_s": timings.get(label), "size_on_disk_bytes": base_size},
                                     predictions=shots_path(str(folder / "predictions.jsonl"), k, len(shots) > 1))
    if options.cot is not None:
        cot_shots = options.cot.get("shots", 3)
        name = names[shots.index(cot_shots)] if cot_shots in shots else names[-1]
        run.variants[name].chain_of_thought = _chain_of_thought(run, options.cot, folder)


def _chain_of_thought(run, cot: dict, folder: Path) -> dict:
    """Direct answers against reasoning first, on the cot data: accuracy, share answered, the paired change."""
    import time
    from dataclasses import replace

    from ..generate.prompting import CotRequest, cot_dataset
    from ..models import ModelOptions

    data = run.data_file("cot", cot["data"])
    tokens = int(cot.get("max_new_tokens", 64))
    settings = replace(run.settings(), max_new_tokens=min(tokens, 8) if run.smoke else tokens)
    started = time.perf_counter()
    results = cot_dataset(ModelOptions(run.recipe.model), run.data_options(data), settings, str(folder / "cot.jsonl"),
                          CotRequest(int(cot.get("shots", 3)), truncate_shots=True))
    task = cot["data"].get("task") if isinstance(cot["data"], dict) else Path(str(cot["data"])).stem
    return {"task": task, "shots": int(cot.get("shots", 3)), "generation_time_s": time.perf_counter() - started,
            "predictions": str(folder / "cot.cot.jsonl"), **results}
