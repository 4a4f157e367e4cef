"""`llmcycle label`: a page where people rank K completions per prompt, and `llmcycle label stats` on its rows.

`label` is a group whose own invocation starts the page, so both of these work:

    llmcycle label --model M --prompts prompts.jsonl --k 4 --out rankings.jsonl
    llmcycle label stats rankings.jsonl --reward rm=runs/rm
"""

from __future__ import annotations

import click

from ..errors import UserError
from .options import DTYPE_CHOICES, apply, data_spec, parse_adapters


def sampling_options(func):
    """The generation flags that matter for sampling K completions (always sampled, seeded)."""
    return apply([
        click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True),
        click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(0), default=50, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds sampling and each labeler's shuffled order."),
        click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True),
    ], func)


def page_options(func):
    return apply([
        click.option("--model", "-m", default=None, help="Model that writes the completions (folder, run folder or hub id)."),
        click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
                     help="Also sample from this adapter (repeatable): the K completions are spread over base and adapters."),
        click.option("--dtype", type=DTYPE_CHOICES, default="auto", show_default=True),
        click.option("--trust-remote-code", is_flag=True),
        click.option("--prompts", default=None, help="Rows with prompts (any format the other verbs read)."),
        click.option("--split", default=None, help="Split of a hub dataset (default train)."),
        click.option("--template", default=None, type=click.Path(), help="YAML template mapping fields to the prompt."),
        click.option("--skip-bad-rows", is_flag=True, help="Skip unusable prompt rows and report how many."),
        click.option("--limit", type=int, default=None, help="Use only the first N prompts."),
        click.option("--completions", default=None, help="Rows of prompt + responses to rank, instead of sampling them."),
        click.option("--k", type=int, default=None, help="Completions per prompt (default 4 when sampling)."),
        click.option("--out", "-o", default=None, help="Rankings file (JSONL); the same file again continues."),
        click.option("--labelers", default=None, type=click.Path(), help="File of 'name token' lines: a token per labeler."),
        click.option("--overlap", type=int, default=1, show_default=True, help="Labelers each prompt goes to (for agreement)."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only without --labelers)."),
        click.option("--port", type=int, default=8000, show_default=True),
        sampling_options,
    ], func)


@click.group(invoke_without_command=True)
@page_options
@click.pass_context
def label(ctx, **flags):
    """Rank K completions per prompt in a page (rows for `llmcycle reward`); `label stats FILE` measures agreement."""
    if ctx.invoked_subcommand is not None:
        _check_no_page_flags(ctx, flags)
        return
    from ..label.session import run_label

    run_label(label_request(flags))


def _check_no_page_flags(ctx, flags: dict) -> None:
    given = [name for name in flags if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} goes with the page (llmcycle label ...), not with "
                        f"'label {ctx.invoked_subcommand}'")


def label_request(flags: dict):
    """The page's flags as a LabelRequest."""
    from ..generate.settings import GenerationSettings
    from ..label.session import LabelRequest
    from ..models import ModelOptions

    if not flags["out"]:
        raise UserError("give --out FILE: the rankings file (JSONL) the page appends to")
    settings = GenerationSettings(do_sample=True, **{name: flags.pop(name) for name in
                                  ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "batch_size")})
    adapters = parse_adapters(flags.pop("adapters"))
    if adapters and not flags["model"]:
        raise UserError("--adapter needs --model: the base the adapters load on")
    model = ModelOptions(flags["model"], flags["dtype"], flags["trust_remote_code"], adapters) if flags["model"] else None
    prompts = data_spec(flags["prompts"], flags) if flags["prompts"] else None
    return LabelRequest(out=flags["out"], completions=flags["completions"], prompts=prompts, model=model, k=flags["k"],
                        settings=settings, labelers=flags["labelers"], overlap=flags["overlap"], host=flags["host"],
                        port=flags["port"])


@label.command()
@click.argument("rankings", type=click.Path())
@click.option("--reward", "rewards", multiple=True, metavar="SPEC",
              help="Also measure how a reward orders the human-ranked pairs: rm=DIR, toxicity or word=W (repeatable).")
@click.option("--out", "-o", default=None, help="Write every statistic (JSON) here.")
@click.option("--bootstrap", "resamples", type=click.IntRange(0), default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
def stats(rankings, rewards, out, resamples, seed):
    """Agreement between labelers (Kendall's tau, pairwise agreement, Krippendorff's alpha), time per item, flags,
    and a reward model's agreement with the rankings."""
    from ..label.stats import label_stats

    label_stats(rankings, list(rewards), out, resamples, seed)


COMMANDS = [label]
