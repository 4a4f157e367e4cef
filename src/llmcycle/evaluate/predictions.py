"""Score predictions files, or a model on data, and compare runs: `llmcycle eval`."""

from __future__ import annotations

from pathlib import Path

from ..data.io import read_rows
from ..data.options import DataOptions
from ..errors import UserError
from ..generate.engine import GenerationSettings, check_fits, generate, token_lengths
from ..generate.predict import prediction_records
from ..models import LoadedModel, ModelOptions
from ..outputs import check_writable, write_json, write_jsonl
from .compare import compare, print_comparison
from .metrics import MetricInput, parse_metrics, score


def read_predictions(path: str) -> tuple[list[dict], list[str]]:
    """Rows of a predictions file with their locations; each needs a string `prediction`."""
    rows, bad = read_rows(path)
    if bad:
        raise UserError(bad[0].message())
    records, wheres = [], []
    for row in rows:
        prediction = row.values.get("prediction")
        if not isinstance(prediction, str):
            problem = "is missing" if prediction is None else f"is not a string (got {type(prediction).__name__})"
            raise UserError(f"{row.where}: field 'prediction' {problem}")
        for name in ("reference", "prompt"):
            value = row.values.get(name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"{row.where}: field '{name}' is not a string (got {type(value).__name__})")
        records.append(row.values)
        wheres.append(row.where)
    return records, wheres


def metric_input(records: list[dict], source: str, loaded: LoadedModel | None, batch_size: int, wheres: list[str] | None = None) -> MetricInput:
    return MetricInput(
        predictions=[r["prediction"] for r in records],
        references=[r.get("reference") for r in records],
        prompts=[r.get("prompt") or "" for r in records],
        wheres=wheres or [f"{source} line {i}" for i in range(1, len(records) + 1)],
        model=loaded,
        batch_size=batch_size,
    )


def run_labels(paths: list[str]) -> list[str]:
    """File stems as run labels; full paths where two stems collide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else path for stem, path in zip(stems, paths)]


def evaluate(
    *,
    predictions: list[str] | None = None,
    model: ModelOptions | None = None,
    data: DataOptions | None = None,
    settings: GenerationSettings | None = None,
    metrics: list[str] | None = None,
    out_path: str | None = None,
    save_predictions: str | None = None,
    resamples: int = 1000,
) -> dict:
    """Score predictions files, or generate with `model` on `data` and score that; prints a comparison table.

    Returns (and writes to `out_path`) `{metric: {"mean", "ci95", "n", ...}}` for one run, or
    `{run_label: {metric: ...}}` for several, later runs carrying the change against the first.
    """
    metric_names = parse_metrics(metrics or ["rouge"])
    settings = settings or GenerationSettings()
    settings.validate()
    if resamples < 0:
        raise UserError("--bootstrap must be 0 or more")
    if not predictions and (model is None or data is None):
        raise UserError("give --predictions FILE, or --model and --data to generate predictions first")
    for path in [p for p in (out_path, save_predictions) if p]:
        check_writable(path)
    needs_model = "perplexity" in metric_names or not predictions
    loaded = model.load() if (model is not None and needs_model) else None
    runs: dict[str, dict] = {}
    if predictions:
        for label, path in zip(run_labels(predictions), predictions):
            records, wheres = read_predictions(path)
            runs[label] = score(metric_input(records, path, loaded, settings.batch_size, wheres), metric_names, resamples, settings.seed)
    else:
        assert data is not None and loaded is not None
        examples = data.load(loaded, settings.seed, require_completion=True).examples
        prompts = [e.prompt for e in examples]
        check_fits(loaded, token_lengths(loaded, prompts), [e.where for e in examples], settings.max_new_tokens)
        records = prediction_records(examples, prompts, generate(loaded, prompts, settings))
        if save_predictions:
            write_jsonl(save_predictions, records)
        wheres = [e.where for e in examples]
        runs[Path(model.model).name or model.model] = score(metric_input(records, data.data, loaded, settings.batch_size, wheres), metric_names, resamples, settings.seed)
    print_comparison("evaluation", runs)
    result = next(iter(runs.values())) if len(runs) == 1 else compare(runs)
    if out_path:
        write_json(out_path, result)
    return result
