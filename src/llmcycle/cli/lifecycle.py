"""`llmcycle run` and `quickstart`: the lifecycle's stages in order, and one report comparing them."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError


@click.command(name="run")
@click.argument("recipe", type=click.Path())
@click.option("--out", "-o", default=None, help="Run folder (default runs/NAME).")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print its stages; run nothing.")
@click.option("--smoke", is_flag=True, help="Every stage on a few rows for a few steps, to check a recipe end to end.")
@click.option("--model", "-m", default=None, help="Use this model instead of the recipe's.")
@click.option("--data", "-d", "data", multiple=True, metavar="NAME=PATH", help="Replace the recipe's train, test or probe-N data.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Recipes with several models: how many run at once, each in its own process (default: one a core).")
def run_(recipe, out, dry_run, smoke, model, data, jobs):
    """Run a recipe: the lifecycle's stages in order, then one report comparing them."""
    from ..lifecycle.recipes import run_recipe

    replacements = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--data {item!r}: write NAME=PATH (train, test or probe-N)")
        replacements[name] = path
    run_recipe(recipe, out, dry_run=dry_run, smoke=smoke, model=model, data=replacements, jobs=jobs)


@click.command()
@click.option("--out", "-o", default="quickstart", show_default=True, help="Run folder.")
@click.option("--smoke", is_flag=True, help="A shortened run, to check the installation.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Recipes with several models: how many run at once, each in its own process (default: one a core).")
def quickstart(out, smoke, jobs):
    """The whole lifecycle on the two embedded models (T5 and Llama), offline, side by side: prompting,
    fine-tuning, forgetting, PPO and DPO, retrieval, int8, a report and how to serve the adapters."""
    from ..lifecycle.recipes import QUICKSTART, run_recipe

    run_recipe(str(QUICKSTART), out, smoke=smoke, jobs=jobs)
    click.echo(f"report: {Path(out) / 'report.html'}")


COMMANDS = [run_, quickstart]
