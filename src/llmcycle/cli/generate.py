"""`llmcycle generate`, `prompt` and `eval`: the first stages, prompting a model and scoring what it wrote."""

from __future__ import annotations

import click

from ..errors import UserError
from ..outputs import dump_jsonl
from .options import (
    data_options, data_spec, generation_options, generation_settings, model_options, model_spec, optional_model_options,
)


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
@click.option("--out", "-o", required=True, help="Predictions file; with several counts, NAME.K-shot.jsonl each; with --cot, NAME.direct/cot/self-consistency.jsonl.")
@click.option("--cot", is_flag=True, help="Chain-of-thought: shots show question, rationale, 'The answer is X.'; compares direct answers with CoT (accuracy of the extracted answer).")
@click.option("--answer-pattern", default=None, help="With --cot: regex with one group that extracts the answer (default: 'the answer is X').")
@click.option("--self-consistency", type=int, default=0, show_default=True, metavar="K", help="With --cot: also sample K reasoning paths (seeded) and take the majority answer.")
@generation_options
def prompt(data, shots, shot_data, truncate_shots, metrics, metrics_out, out, cot, answer_pattern, self_consistency, **kwargs):
    """In-context learning: zero-, one- and few-shot prompts, compared; --cot compares chain-of-thought with direct answers."""
    from ..generate.prompting import CotRequest, cot_dataset, parse_shots, prompt_dataset

    settings, model = generation_settings(kwargs), model_spec(kwargs)
    shot_options = data_spec(shot_data, kwargs, keep=True) if shot_data else None
    if cot:
        counts = parse_shots(shots)
        if len(counts) != 1:
            raise UserError("--cot takes one --shots count")
        request = CotRequest(counts[0], answer_pattern, self_consistency, truncate_shots, metrics_out)
        cot_dataset(model, data_spec(data, kwargs), settings, out, request, shot_data=shot_options)
        return
    if answer_pattern or self_consistency:
        raise UserError("--answer-pattern and --self-consistency go with --cot")
    prompt_dataset(
        model, data_spec(data, kwargs), shots, settings, out, shot_data=shot_options,
        truncate_shots=truncate_shots, metrics=list(metrics), metrics_out=metrics_out,
    )


@click.command(name="eval")
@click.option("--predictions", "-P", multiple=True, help="Predictions JSONL (repeatable: compared against the first).")
@optional_model_options("Model to generate with or score on a suite (and for perplexity).")
@click.option("--data", "-d", default=None, help="Test data to generate predictions for (with --model); prompt-only rows take reference-free metrics.")
@click.option("--suite", default=None, help="Multiple-choice suite: rows of question/choices/answer, an MMLU folder (dev/, test/), or with --engine lm-eval a task name or task YAML.")
@click.option("--shots", type=int, default=0, show_default=True, help="With --suite: solved items before each question.")
@click.option("--shot-data", default=None, help="With --suite: solved items to take shots from (default: an MMLU folder's dev/, else other items).")
@click.option("--scoring", type=click.Choice(["choice", "letter"]), default="choice", show_default=True, help="With --suite: score each choice's text (lm-eval multiple_choice), or the letters A-D under a listed question (MMLU style).")
@click.option("--samples", default=None, help="With --suite: write one line per item (id, answer, pred, correct, loglikelihoods) here.")
@click.option("--compare", "compare_models", multiple=True, metavar="MODEL", help="Also score this model (a tuned run) on the same items or rows; paired change with interval and p-value (repeatable).")
@click.option("--engine", type=click.Choice(["native", "lm-eval"]), default="native", show_default=True, help="With --suite: lm-eval runs a named lm-evaluation-harness task (pip install 'llmcycle[lm-eval]').")
@click.option("--holistic", is_flag=True, help="With --suite: add the HELM-style view (calibration, robustness, toxicity, efficiency) under 'holistic'.")
@data_options
@click.option("--metrics", multiple=True, default=["rouge"], show_default=True, help="rouge, bleu, exact_match, perplexity (need references); toxicity, length, distinct (reference-free, for prompt-only rows too).")
@click.option("--bootstrap", "resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--save-predictions", default=None, help="With --model: also write the predictions (JSONL) here.")
@click.option("--out", "-o", default=None, help="Write metrics (JSON) here.")
@generation_options
def eval_(predictions, data, suite, shots, shot_data, scoring, samples, compare_models, engine, holistic, metrics, resamples, save_predictions, out, **kwargs):
    """Score predictions, a model on data, or a model on a multiple-choice suite, with bootstrap 95% intervals."""
    from ..evaluate.benchmark import SuiteRequest
    from ..evaluate.predictions import evaluate

    settings = generation_settings(kwargs)
    model = model_spec(kwargs) if kwargs.get("model") else None
    _check_eval_flags(model, kwargs, predictions, data, suite, compare_models)
    suite_request = None
    if suite:
        suite_request = SuiteRequest(suite, shots, shot_data, scoring, kwargs["split"], kwargs["limit"], samples, resamples,
                                     settings.seed, settings.batch_size, holistic)
    elif shots or shot_data or samples or holistic or engine != "native":
        raise UserError("--shots, --shot-data, --samples, --holistic and --engine go with --suite")
    evaluate(
        predictions=list(predictions), model=model, data=data_spec(data, kwargs) if data else None, settings=settings,
        metrics=list(metrics or []), out_path=out, save_predictions=save_predictions, resamples=resamples,
        suite=suite_request, compare_models=list(compare_models), engine=engine,
    )


def _check_eval_flags(model, kwargs, predictions, data, suite, compare_models) -> None:
    if model is None and (kwargs.get("adapters") or data or suite or compare_models):
        raise UserError("--data, --suite, --compare and --adapter need --model")
    if sum(bool(x) for x in (predictions, data, suite)) > 1:
        raise UserError("give one of --predictions, --data or --suite")
    if compare_models and not (data or suite):
        raise UserError("--compare needs --data or --suite: the models are compared on the same rows")
    if suite and (kwargs.get("template") or kwargs.get("skip_bad_rows")):
        raise UserError("--template and --skip-bad-rows apply to --data; a suite's rows are question/choices/answer, and a bad one stops")


COMMANDS = [generate, prompt, eval_]
