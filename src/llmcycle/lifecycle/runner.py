"""A recipe's steps: read and checked (`recipe_from`, `plan`), shown (`show_plan`) and run in order (`run_steps`).

Each stage writes into `OUT/stages/NN-STAGE[-NAME]/` and records what it produced in `stage.json` last, so a stage
whose folder is complete is skipped when the run is repeated: an interrupted run continues. The stages come from
the registry (lifecycle/stages/): this module names none of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import config as configs
from ..console import note, print_table
from ..errors import UserError
from ..evaluate import parse_metrics
from ..generate.settings import GenerationSettings
from ..outputs import write_json
from .core import Recipe, Run, Stage, Step, Variant, check_data_spec, variant_metrics
from .stages import STAGES

RECIPE_KEYS = {"name", "description", "model", "data", "template", "probes", "generation", "metrics", "stages"}


def recipe_from(data: dict, source: str, model: str | None = None, data_overrides: dict | None = None) -> Recipe:
    """A checked recipe from its fields as read from `source`."""
    unknown = sorted(set(data) - RECIPE_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown field '{unknown[0]}'; a recipe has {', '.join(sorted(RECIPE_KEYS | {'models'}))}")
    for required in ("model", "data", "stages"):
        if required not in data:
            raise UserError(f"{source}: field '{required}' is missing" + (" (or 'models')" if required == "model" else ""))
    recipe = Recipe(
        name=str(data.get("name") or Path(source).stem), model=str(model or data["model"]), data=_mapping(data["data"], source, "data"),
        probes=_list(data.get("probes", []), source, "probes"), generation=_mapping(data.get("generation", {}), source, "generation"),
        metrics=_list(data.get("metrics", ["rouge"]), source, "metrics"), stages=_list(data["stages"], source, "stages"),
        source=source, description=str(data.get("description", "")), template=_template_path(data.get("template"), source),
    )
    _replace_data(recipe, data_overrides or {})
    for name in ("train", "test"):
        if name not in recipe.data:
            raise UserError(f"{source}: data.{name} is missing")
    for name, spec in [*recipe.data.items(), *((f"probes[{i}]", p) for i, p in enumerate(recipe.probes))]:
        check_data_spec(spec, source, name)
    parse_metrics(recipe.metrics)
    configs.checked(GenerationSettings, recipe.generation, f"{source}: generation")
    plan(recipe)  # validates every stage
    return recipe


def _replace_data(recipe: Recipe, replacements: dict) -> None:
    """`--data train=PATH` and `--data probe-N=PATH` in place of the recipe's own data."""
    for name, value in replacements.items():
        if name not in ("train", "test") and not name.startswith("probe"):
            raise UserError(f"--data {name}=...: name train, test or probe-N")
        if name.startswith("probe"):
            index = name.removeprefix("probe-").removeprefix("probe")
            if not index.isdigit() or int(index) >= len(recipe.probes):
                raise UserError(f"--data {name}=...: the recipe has {len(recipe.probes)} probes (probe-0, probe-1, ...)")
            recipe.probes[int(index)] = value
        else:
            recipe.data[name] = value


def _template_path(value, source: str) -> str | None:
    if value is None:
        return None
    path = Path(value) if Path(value).is_absolute() else Path(source).parent / str(value)
    if not path.is_file():
        raise UserError(f"{source}: template {value} does not exist")
    return str(path)


def _mapping(value, source: str, name: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{source}: field '{name}' must be a mapping")
    return value


def _list(value, source: str, name: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"{source}: field '{name}' must be a list")
    return value


def plan(recipe: Recipe) -> list[Step]:
    """The stages in order, each checked by its stage's `check`."""
    steps, names = [], {"base"}
    for index, entry in enumerate(recipe.stages, start=1):
        where = f"{recipe.source}: stage {index}"
        stage, options = _stage_entry(entry, where)
        name = str(options.get("name", stage.name if stage.names_variant else ""))
        stage.check(options, where, names, recipe.source)
        if stage.names_variant:
            if name in names:
                raise UserError(f"{where}: variant name '{name}' is used twice")
            names.add(name)
        steps.append(Step(index, stage.name, name, options))
    return steps


def _stage_entry(entry, where: str) -> tuple[Stage, dict]:
    """A recipe's `- NAME: {options}` item as its registered stage and options."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise UserError(f"{where}: write each stage as one '- kind: {{options}}' item")
    (name, options), = entry.items()
    options = options or {}
    if name not in STAGES:
        raise UserError(f"{where}: unknown stage '{name}'; stages are {', '.join(STAGES)}")
    if not isinstance(options, dict):
        raise UserError(f"{where} ({name}): options must be a mapping")
    return STAGES[name], options


def show_plan(recipe: Recipe, title: str = "") -> None:
    print_table(title or f"recipe {recipe.name}: {recipe.model}", ["#", "stage", "name", "options"],
                [(s.index, s.stage, s.name or "-", json.dumps(s.options) if s.options else "") for s in plan(recipe)])


def run_steps(recipe: Recipe, out: Path, smoke: bool, announce_skips: bool = True) -> Run:
    """Every stage in order into OUT/stages/; a stage whose stage.json exists is restored, not run again."""
    run = Run(recipe, out, smoke)
    for step in plan(recipe):
        folder = run.out / "stages" / step.folder
        done = folder / "stage.json"
        if done.is_file():
            if announce_skips:
                note(f"stage {step.index} ({step.stage} {step.name}) is complete; skipping")
            _restore(run, done)
            continue
        started = time.perf_counter()
        STAGES[step.stage].run(run, step, folder)
        write_json(done, {"seconds": time.perf_counter() - started, "variants": [v.__dict__ for v in run.variants.values()]})
        write_json(run.out / "metrics.json", variant_metrics(run))
    return run


def _restore(run: Run, done: Path) -> None:
    for record in json.loads(done.read_text())["variants"]:
        if "stage" not in record:  # variants recorded a 'kind' (prompting, finetune, ...) before they named their stage
            raise UserError(f"{done} was written by an earlier llmcycle; run the recipe into a new --out folder")
        run.variants[record["name"]] = Variant(**record)
