"""`eval --engine lm-eval`: run a task of lm-evaluation-harness by name on our loaded model.

For users who have the harness's task data at hand (its cache, or a hub it can reach): the model is loaded as
every llmcycle verb loads it (run folders, adapters, dtype) and handed to lm-eval's HFLM, so the numbers are
the harness's own. lm-eval is an optional extra (`pip install 'llmcycle[lm-eval]'`); the native engine needs
nothing beyond llmcycle.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from ..models import ModelOptions


def run_lm_eval(model: ModelOptions, request) -> dict:
    """`{metric: {"mean", "stderr", "ci95", "n"}}` for lm-eval task `request.suite` (a registered name, or a task
    YAML file), as the harness reports it; ci95 is its mean +- 1.96 standard errors."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise UserError("--engine lm-eval needs lm-evaluation-harness: pip install 'llmcycle[lm-eval]'") from exc
    task, manager = _task(request.suite)
    loaded = model.load()
    backend = "seq2seq" if loaded.is_encoder_decoder else "causal"
    wrapped = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, backend=backend, batch_size=request.batch_size)
    try:
        results = lm_eval.simple_evaluate(model=wrapped, tasks=[task], task_manager=manager, num_fewshot=request.shots or None,
                                          limit=request.limit, random_seed=request.seed, log_samples=False)
    except Exception as exc:  # the harness raises many types for unknown tasks and unreachable data
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(f"--suite {request.suite}: lm-eval could not run this task ({reason})") from exc
    return _summaries(results, task)


def _task(suite: str):
    """A task name for lm-eval's registry, or a task YAML file: its `task` name, with its folder on the include path."""
    path = Path(suite)
    if path.suffix not in (".yaml", ".yml"):
        return suite, None
    from lm_eval.tasks import TaskManager

    try:
        name = yaml.safe_load(path.read_text(encoding="utf-8"))["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(f"--suite {suite}: not a readable lm-eval task YAML with a 'task' name") from exc
    return str(name), TaskManager(include_path=str(path.resolve().parent))


def _summaries(results: dict, task: str) -> dict:
    """lm-eval's `{"acc,none": x, "acc_stderr,none": s}` as ours: `{"acc": {"mean", "stderr", "ci95", "n"}}`."""
    found = results.get("results", {}).get(task)
    if not found:
        raise UserError(f"--suite {task}: lm-eval returned no results for this task")
    count = results.get("n-samples", {}).get(task, {}).get("effective")
    summary = {}
    for key, value in found.items():
        name, comma, _filter = key.partition(",")
        if not comma or name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue  # metrics are `name,filter`; sample_len and alias are not
        stderr = found.get(f"{name}_stderr,{_filter}")
        entry: dict = {"mean": round(float(value), 6), "n": count}
        if isinstance(stderr, (int, float)):
            entry["stderr"] = round(float(stderr), 6)
            low, high = float(value) - 1.96 * stderr, float(value) + 1.96 * stderr
            if 0 <= value <= 1:  # a share: keep the normal interval inside [0, 1]
                low, high = max(low, 0.0), min(high, 1.0)
            entry["ci95"] = [round(low, 6), round(high, 6)]
        summary[name] = entry
    return summary
