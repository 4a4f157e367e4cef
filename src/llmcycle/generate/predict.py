"""Predictions for one prompt or every row of a data file: `llmcycle generate`."""

from __future__ import annotations

from ..console import note
from ..data import Example
from ..data.options import DataOptions
from ..errors import UserError
from ..models import ModelOptions
from ..outputs import check_writable, write_jsonl
from .engine import GenerationSettings, check_fits, generate, token_lengths


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
