"""`llmcycle generate`, `prompt` and `eval`: the first stages, prompting a model and scoring what it wrote."""

from __future__ import annotations

import click

from ..errors import UserError
from .options import DTYPE_CHOICES, data_options, data_spec, generation_options, generation_settings, model_options, model_spec


@click.command()
@model_options
@click.option("--prompt", "-p", default=None, help="One prompt: its completion is printed.")
@click.option("--data", "-d", default=None, help="Data file or hub dataset: one prediction per row.")
@data_options
@click.option("--out", "-o", default=None, help="Write predictions (JSONL) here instead of stdout.")
@generation_options
def generate(prompt, data, out, **kwargs):
    """Complete one prompt, or every row of a data file."""
    from ..generate.predict import generate_dataset, generate_one
    from ..outputs import dump_jsonl

    settings, model = generation_settings(kwargs), model_spec(kwargs)
    if (prompt is None) == (data is None):
        raise UserError("give exactly one of --prompt TEXT or --data FILE")
    if prompt is not None:
        if out:
            raise UserError("--out goes with --data; with --prompt the completion is printed")
        click.echo(generate_one(model, prompt, settings))
        return
    records = generate_dataset(model, data_spec(data, kwargs), settings, out)
    if not out:
        click.echo(dump_jsonl(records))


@click.command()
@model_options
@click.option("--data", "-d", required=True, help="Queries (test rows).")
@click.option("--shots", "-k", default="0", show_default=True, help="Examples before each query: a count or a list such as 0,1,5.")
@click.option("--shot-data", default=None, help="Solved examples to draw shots from (default: --data, never the row itself).")
@data_options
@click.option("--truncate-shots", is_flag=True, help="Drop shots from prompts that do not fit the context window, instead of failing.")
@click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="Metrics for the table, when rows have completions.")
@click.option("--metrics-out", default=None, help="Write the metrics per shot count (JSON) here.")
@click.option("--out", "-o", required=True, help="Predictions file; with several counts, NAME.K-shot.jsonl each.")
@generation_options
def prompt(data, shots, shot_data, truncate_shots, metrics, metrics_out, out, **kwargs):
    """In-context learning: zero-, one- and few-shot prompts, compared."""
    from ..generate.prompting import prompt_dataset

    settings, model = generation_settings(kwargs), model_spec(kwargs)
    shot_options = data_spec(shot_data, kwargs, keep=True) if shot_data else None
    prompt_dataset(
        model, data_spec(data, kwargs), shots, settings, out, shot_data=shot_options,
        truncate_shots=truncate_shots, metrics=list(metrics), metrics_out=metrics_out,
    )


@click.command(name="eval")
@click.option("--predictions", "-P", multiple=True, help="Predictions JSONL (repeatable: compared against the first).")
@click.option("--model", "-m", default=None, help="Model to generate with (and for perplexity).")
@click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR")
@click.option("--use", default=None, metavar="NAME")
@click.option("--data", "-d", default=None, help="Test data to generate predictions for (with --model).")
@data_options
@click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="rouge, bleu, exact_match, toxicity, perplexity (comma-separated or repeated).")
@click.option("--bootstrap", "resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--save-predictions", default=None, help="With --model: also write the predictions (JSONL) here.")
@click.option("--out", "-o", default=None, help="Write metrics (JSON) here.")
@generation_options
def eval_(predictions, data, metrics, resamples, save_predictions, out, **kwargs):
    """Score predictions (ROUGE, BLEU, exact match, toxicity, perplexity) with bootstrap 95% intervals."""
    from ..evaluate.predictions import evaluate

    settings = generation_settings(kwargs)
    model = model_spec(kwargs) if kwargs.get("model") else None
    data_opts = data_spec(data, kwargs) if data else None
    if model is None and (kwargs.get("adapters") or data):
        raise UserError("--data and --adapter need --model")
    if predictions and data:
        raise UserError("give --predictions or --data, not both")
    evaluate(
        predictions=list(predictions), model=model, data=data_opts, settings=settings, metrics=list(metrics),
        out_path=out, save_predictions=save_predictions, resamples=resamples,
    )


COMMANDS = [generate, prompt, eval_]
