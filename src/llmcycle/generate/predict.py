"""The verbs of the first lifecycle stages as Python functions; `cli.py` parses flags and calls these.

    generate: complete one prompt, or every row of a data file
    prompt:   in-context learning with 0/1/k shots, one predictions file per k, a metrics table
    evaluate: score predictions files (or a model on data) and compare them
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..console import note
from ..data import Example, LoadedData, load_examples, load_template
from ..data.io import read_rows
from ..errors import UserError
from ..evaluate import MetricInput, parse_metrics, print_comparison, score
from ..evaluate.compare import compare
from .engine import GenerationSettings, check_fits, generate, token_lengths
from ..models import LoadedModel, chat_renderer, load_model, use_adapter
from ..outputs import check_writable, write_json, write_jsonl
from .prompting import build_prompts, parse_shots


@dataclass
class ModelOptions:
    """Which model to load and how."""

    model: str
    """A save_pretrained folder, an llmcycle run folder (model/ or adapter/), or a hub id."""
    dtype: str = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU that has it), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model; off unless asked for."""
    adapters: list[tuple[str, str]] = field(default_factory=list)
    """Extra named adapters to load on the base: (name, folder)."""
    use: str | None = None
    """Which loaded adapter is active; `base` disables them."""

    def load(self) -> LoadedModel:
        loaded = load_model(self.model, dtype=self.dtype, trust_remote_code=self.trust_remote_code, adapters=self.adapters)
        use_adapter(loaded, self.use)
        return loaded


@dataclass
class DataOptions:
    """Where rows come from and how they become prompts."""

    data: str
    """A .jsonl/.json/.csv/.parquet file or a hub dataset id."""
    split: str | None = None
    """Split of a hub dataset (default train)."""
    template: str | None = None
    """YAML template mapping the rows' fields to prompt and completion."""
    skip_bad_rows: bool = False
    """Skip unusable rows (and report how many) instead of stopping at the first."""
    limit: int | None = None
    """Use only the first N usable rows."""

    def load(self, loaded: LoadedModel | None, seed: int, require_completion: bool = False) -> LoadedData:
        template = load_template(self.template) if self.template else None
        chat = chat_renderer(loaded.tokenizer) if loaded is not None else None
        data = load_examples(
            self.data, split=self.split, template=template, chat=chat, seed=seed,
            require_completion=require_completion, skip_bad_rows=self.skip_bad_rows,
        )
        if self.limit is not None:
            if self.limit < 1:
                raise UserError("--limit must be at least 1")
            data.examples = data.examples[: self.limit]
        return data


def prediction_records(examples: list[Example], prompts: list[str], predictions: list[str], extra: dict | None = None) -> list[dict]:
    records = []
    for example, prompt, prediction in zip(examples, prompts, predictions):
        record = {"prompt": prompt, "prediction": prediction}
        if example.completion is not None:
            record["reference"] = example.completion
        records.append({**record, **(extra or {})})
    return records


def generate_one(model: ModelOptions, prompt: str, settings: GenerationSettings) -> str:
    """The completion of a single prompt."""
    settings.validate()
    if not prompt.strip():
        raise UserError("--prompt is empty")
    loaded = model.load()
    check_fits(loaded, token_lengths(loaded, [prompt]), ["--prompt"], settings.max_new_tokens)
    return generate(loaded, [prompt], settings)[0]


def generate_dataset(model: ModelOptions, data: DataOptions, settings: GenerationSettings, out_path: str | None) -> list[dict]:
    """Complete every row of `data`; writes `{"prompt", "prediction", "reference"?}` lines to `out_path`."""
    settings.validate()
    if out_path:
        check_writable(out_path)
    loaded = model.load()
    examples = data.load(loaded, settings.seed).examples
    prompts = [example.prompt for example in examples]
    check_fits(loaded, token_lengths(loaded, prompts), [e.where for e in examples], settings.max_new_tokens)
    records = prediction_records(examples, prompts, generate(loaded, prompts, settings))
    if out_path:
        write_jsonl(out_path, records)
        note(f"wrote {len(records)} predictions to {out_path}")
    return records


def shots_path(out_path: str, shots: int, several: bool) -> str:
    """`preds.jsonl` for a single k; `preds.0-shot.jsonl`, `preds.5-shot.jsonl`, ... for several."""
    if not several:
        return out_path
    path = Path(out_path)
    return str(path.with_name(f"{path.stem}.{shots}-shot{path.suffix or '.jsonl'}"))


def shots_label(shots: int) -> str:
    return {0: "zero-shot", 1: "one-shot"}.get(shots, f"{shots}-shot")


def prompt_dataset(
    model: ModelOptions,
    data: DataOptions,
    shots: str,
    settings: GenerationSettings,
    out_path: str,
    *,
    shot_data: DataOptions | None = None,
    truncate_shots: bool = False,
    metrics: list[str] | None = None,
    metrics_out: str | None = None,
) -> dict[str, dict]:
    """In-context learning with each shot count; returns `{label: metrics}` and writes a predictions file per count."""
    counts = parse_shots(shots)
    settings.validate()
    metric_names = parse_metrics(metrics or ["rouge"])
    paths = [shots_path(out_path, k, len(counts) > 1) for k in counts]
    for path in [*paths, *([metrics_out] if metrics_out else [])]:
        check_writable(path)
    loaded = model.load()
    queries = data.load(loaded, settings.seed).examples
    pool_source = shot_data or data
    pool = queries if shot_data is None else shot_data.load(loaded, settings.seed, require_completion=True).examples
    if max(counts) > 0 and shot_data is None and any(e.completion is None for e in pool):
        raise UserError(f"{data.data}: rows used as shots need a completion; pass --shot-data with solved examples")
    # Build (and length-check) every prompt for every count before generating anything.
    prompt_sets = {
        k: build_prompts(loaded, queries, pool, k, seed=settings.seed, same_source=shot_data is None,
                         max_new_tokens=settings.max_new_tokens, truncate_shots=truncate_shots)
        for k in counts
    }
    results: dict[str, dict] = {}
    for k, path in zip(counts, paths):
        shot_prompts = prompt_sets[k]
        truncated = sum(p.shots < k for p in shot_prompts)
        if truncated:
            note(f"{k}-shot: {truncated} of {len(shot_prompts)} prompts lost shots to fit the context window")
        texts = [p.text for p in shot_prompts]
        predictions = generate(loaded, texts, settings, description=f"{shots_label(k)} ({pool_source.data})")
        records = [
            {**record, "shots": p.shots}
            for record, p in zip(prediction_records(queries, texts, predictions), shot_prompts)
        ]
        write_jsonl(path, records)
        note(f"wrote {len(records)} predictions to {path}")
        if all(e.completion is not None for e in queries):
            results[shots_label(k)] = score(_metric_input(records, path, loaded, settings.batch_size), metric_names, seed=settings.seed)
    if results:
        print_comparison("in-context learning", results)
        if metrics_out:
            write_json(metrics_out, compare(results))
    else:
        note("the data has no completions, so no metrics were computed")
    return results


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


def _metric_input(records: list[dict], source: str, loaded: LoadedModel | None, batch_size: int, wheres: list[str] | None = None) -> MetricInput:
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
            runs[label] = score(_metric_input(records, path, loaded, settings.batch_size, wheres), metric_names, resamples, settings.seed)
    else:
        assert data is not None and loaded is not None
        examples = data.load(loaded, settings.seed, require_completion=True).examples
        prompts = [e.prompt for e in examples]
        check_fits(loaded, token_lengths(loaded, prompts), [e.where for e in examples], settings.max_new_tokens)
        records = prediction_records(examples, prompts, generate(loaded, prompts, settings))
        if save_predictions:
            write_jsonl(save_predictions, records)
        wheres = [e.where for e in examples]
        runs[Path(model.model).name or model.model] = score(_metric_input(records, data.data, loaded, settings.batch_size, wheres), metric_names, resamples, settings.seed)
    print_comparison("evaluation", runs)
    result = next(iter(runs.values())) if len(runs) == 1 else compare(runs)
    if out_path:
        write_json(out_path, result)
    return result


__all__ = ["DataOptions", "ModelOptions", "evaluate", "generate_dataset", "generate_one", "prompt_dataset"]
