"""Recipes: the lifecycle's stages in order, one folder each, and one comparison at the end.

A recipe (YAML) names the model, the data and the stages:

    name: quickstart
    model: embedded                       # a folder, a hub id, or the model shipped with llmcycle
    data:
      train: {task: dialogsum, rows: 400, seed: 1}    # built-in synthetic data, or a file path
      test: {task: dialogsum, rows: 50, seed: 2}
    probes:                               # held-out tasks: did tuning make the model forget them?
      - {task: classify, rows: 30, seed: 3}
      - {suite: mmlu/, shots: 5, holistic: true}  # a multiple-choice suite: forgetting with a paired test (eval --suite)
    generation: {max_new_tokens: 48, batch_size: 16}
    metrics: [rouge, toxicity]
    stages:
      - baseline: {shots: [0, 1, 3]}
      - finetune: {name: lora, method: lora, lora_rank: 16, lr: 3.0e-3, epochs: 2}
      - eval: {}
      - align: {name: lora+ppo, from: lora, reward: [toxicity], max_steps: 20}   # the LoRA adapter keeps training
      - align: {name: dpo, method: dpo, from: lora, data: prefs.jsonl, beta: 0.1}  # DPO on preference rows
      - deploy: {from: lora}
      - report: {}

Each stage writes into `OUT/stages/NN-STAGE-NAME/` and records what it produced in `stage.json` last, so a
stage whose folder is complete is skipped when the run is repeated: an interrupted run continues. `eval`
scores every variant produced so far on the test data and the probes; `report` writes `OUT/report.html`
and `OUT/metrics.json`. `--smoke` runs every stage on a few rows for a few steps, to check a recipe. Each
stage is a module of lifecycle/stages/; a recipe with `models` runs on several (lifecycle/multi_model.py).
"""

from __future__ import annotations

from pathlib import Path

from .. import config as configs
from ..errors import UserError
from .core import Recipe, variant_metrics
from .multi_model import model_data, model_recipes, run_models
from .runner import recipe_from, run_steps, show_plan
from .stages.report import print_run_findings

RECIPES = Path(__file__).parent.parent / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"


def load_recipe(path: str | Path, model: str | None = None, data_overrides: dict | None = None) -> Recipe:
    """Read and check a recipe; every problem is one line naming the file and the stage or field.

    `model` and `data_overrides` ({"train": path, ...}) replace the recipe's own, e.g. to try a recipe
    written for a GPU on a small local model and file.
    """
    source = str(path)
    data = configs.read_yaml(path)
    if {"prompt", "completion"} & set(data) and "stages" not in data:
        raise UserError(f"{source} is a data template (prompt/completion), not a recipe: name it in a recipe's "
                        "'template' field or pass it to --template")
    if "models" in data:  # several models: with --model, that model alone on the shared stages;
        models = model_data(data, source)  # else the first model, with its stage changes, stands for the recipe
        shared = {key: value for key, value in data.items() if key != "models"}
        data = {**shared, "model": model} if model else next(iter(models.values()))
    return recipe_from(data, source, model, data_overrides)


def run_recipe(path: str, out: str | None = None, *, dry_run: bool = False, smoke: bool = False, model: str | None = None,
               data: dict | None = None, jobs: int | None = None) -> dict:
    """Run (or with `dry_run`, only check and show) a recipe; returns the variants' metrics (by label, for a recipe
    with several models)."""
    recipes = None if model else model_recipes(path, data)
    if recipes:
        return run_models(recipes, Path(out or f"runs/{next(iter(recipes.values())).name}"), dry_run=dry_run, smoke=smoke, jobs=jobs)
    recipe = load_recipe(path, model, data)
    if dry_run:
        show_plan(recipe)
        return {}
    run = run_steps(recipe, Path(out or f"runs/{recipe.name}"), smoke)
    metrics = variant_metrics(run)
    print_run_findings(run, metrics)
    return metrics
