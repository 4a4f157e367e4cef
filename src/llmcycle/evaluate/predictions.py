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
from .benchmark import SuiteRequest, evaluate_suite, model_labels, with_options
from .compare import compare, print_comparison
from .forgetting import add_changes
from .harness import run_lm_eval
from .metrics import MetricInput, check_references, parse_metrics, score, statistics
from .stats import bootstrap_summary


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
    suite: SuiteRequest | None = None,
    compare_models: list[str] | None = None,
    engine: str = "native",
    label: str | None = None,
) -> dict:
    """Score predictions files, or generate with `model` on `data` and score that, or score `model` on a suite.

    Returns (and writes to `out_path`) `{metric: {"mean", "ci95", "n", ...}}` for one run, or
    `{run_label: {metric: ...}}` for several, later runs carrying the change against the first (with
    `compare_models`, a paired change with its interval and p-value). `label` names the model in the console
    table (default: its folder name); the table's title names the data.
    """
    settings = settings or GenerationSettings()
    settings.validate()
    if resamples < 0:
        raise UserError("--bootstrap must be 0 or more")
    for path in [p for p in (out_path, save_predictions, suite and suite.samples) if p]:
        check_writable(path)
    if suite is not None:
        result = _evaluate_suite(model, suite, compare_models or [], settings, engine)
    elif predictions:
        result = _score_files(predictions, model, settings, parse_metrics(metrics or ["rouge"]), resamples)
    else:
        if model is None or data is None:
            raise UserError("give --predictions FILE, or --model and --data to generate predictions first, or --model and --suite")
        result = _generate_and_score(model, data, settings, parse_metrics(metrics or ["rouge"]), resamples, save_predictions,
                                     compare_models or [], label)
    if out_path:
        write_json(out_path, result)
    return result


def _evaluate_suite(model: ModelOptions | None, suite: SuiteRequest, compare_models: list[str], settings: GenerationSettings, engine: str) -> dict:
    if model is None:
        raise UserError("--suite needs --model")
    if engine == "lm-eval":
        if compare_models or suite.holistic:
            raise UserError("--engine lm-eval runs one model on a named task; use the native engine for --compare and --holistic")
        return run_lm_eval(model, suite)
    if engine != "native":
        raise UserError(f"--engine {engine!r}: use native or lm-eval")
    return evaluate_suite(model, suite, compare_models, settings)


def _score_files(paths: list[str], model: ModelOptions | None, settings: GenerationSettings, metric_names: list[str], resamples: int) -> dict:
    loaded = model.load() if (model is not None and "perplexity" in metric_names) else None
    runs: dict[str, dict] = {}
    for label, path in zip(run_labels(paths), paths):
        records, wheres = read_predictions(path)
        runs[label] = score(metric_input(records, path, loaded, settings.batch_size, wheres), metric_names, resamples, settings.seed)
    print_comparison("evaluation of " + ", ".join(Path(p).name for p in paths), runs)
    return next(iter(runs.values())) if len(runs) == 1 else compare(runs)


def _generate_and_score(model: ModelOptions, data: DataOptions, settings: GenerationSettings, metric_names: list[str],
                        resamples: int, save_predictions: str | None, compare_models: list[str], label: str | None = None) -> dict:
    """Generate with each model on the same rows; later models get a paired change against the first."""
    labels = model_labels([model.model, *compare_models])
    labels[0] = label or labels[0]
    runs, stats, saved = {}, {}, []
    examples = None
    for label, options in zip(labels, [model, *(with_options(model, s) for s in compare_models)]):
        loaded = options.load()
        if examples is None:
            examples = data.load(loaded, settings.seed).examples
            check_references(metric_names, [e.completion for e in examples], [e.where for e in examples])
        prompts = [e.prompt for e in examples]
        check_fits(loaded, token_lengths(loaded, prompts), [e.where for e in examples], settings.max_new_tokens)
        records = prediction_records(examples, prompts, generate(loaded, prompts, settings, description=f"generating ({label})"))
        saved += [{"model": label, **r} if compare_models else r for r in records]
        stats[label] = statistics(metric_input(records, data.data, loaded, settings.batch_size, [e.where for e in examples]), metric_names)
        runs[label] = {name: bootstrap_summary(statistic, resamples, settings.seed) for name, statistic in stats[label].items()}
        del loaded
    if save_predictions:
        write_jsonl(save_predictions, saved)
    print_comparison(f"evaluation on {Path(data.data).name}", runs)
    return add_changes(runs, stats, resamples, settings.seed) if compare_models else runs[labels[0]]
