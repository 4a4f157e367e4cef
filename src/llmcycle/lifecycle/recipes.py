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

Each stage writes into `OUT/stages/NN-KIND-NAME/` and records what it produced in `stage.json` last, so a
stage whose folder is complete is skipped when the run is repeated: an interrupted run continues. `eval`
scores every variant produced so far on the test data and the probes; `report` writes `OUT/report.html`
and `OUT/metrics.json`. `--smoke` runs every stage on a few rows for a few steps, to check a recipe.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config as configs
from ..console import note, print_table
from ..errors import UserError
from ..outputs import write_json, write_jsonl

RECIPES = Path(__file__).parent.parent / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"
STAGES = ("baseline", "finetune", "eval", "align", "deploy", "rag", "report")
RECIPE_KEYS = {"name", "description", "model", "data", "template", "probes", "generation", "metrics", "stages"}
SMOKE_ROWS, SMOKE_STEPS = 8, 2


@dataclass
class Variant:
    """One way of using the model (prompted, tuned, aligned, deployed) and what it cost and scored."""

    name: str
    model: str
    kind: str
    """prompting, finetune, align or deploy."""
    cost: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    chain_of_thought: dict = field(default_factory=dict)
    """A baseline's `cot` result (prompting_stage): direct against chain-of-thought accuracy on its own data."""
    suites: dict = field(default_factory=dict)
    """Suite probes: {label: eval --suite's result, with "samples", the per-item file the forgetting test pairs}."""
    predictions: str | None = None
    log: str | None = None


@dataclass
class Recipe:
    name: str
    model: str
    data: dict
    probes: list
    generation: dict
    metrics: list
    stages: list
    source: str
    description: str = ""
    template: str | None = None
    """YAML template for rows that are not prompt/completion (a path relative to the recipe)."""


# ---------------------------------------------------------------- loading and validation


@dataclass(frozen=True)
class Step:
    """One stage of a recipe, as checked by `plan`."""

    index: int
    """Its place in the recipe, from 1 (names its folder)."""
    kind: str
    """baseline, finetune, eval, align, deploy or report."""
    name: str
    """The variant it makes (finetune, align), else ''."""
    options: dict
    """The stage's fields as written in the recipe."""

    @property
    def folder(self) -> str:
        return f"{self.index:02d}-{self.kind}" + (f"-{self.name}" if self.name else "").replace("+", "-")


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
    if "models" in data:  # several models (lifecycle/kinds.py): with --model, that model alone on the shared stages;
        from .kinds import kind_data  # else the first model, with its stage changes, stands for the recipe

        kinds = kind_data(data, source)  # checks every model's entry either way
        shared = {key: value for key, value in data.items() if key != "models"}
        data = {**shared, "model": model} if model else next(iter(kinds.values()))
    return recipe_from(data, source, model, data_overrides)


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
        _check_data_spec(spec, source, name)
    from ..evaluate import parse_metrics
    from ..generate.engine import GenerationSettings

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


def _check_data_spec(spec, source: str, name: str) -> None:
    """A file path, a hub id, {path, split} for a hub split, or {task, rows, seed} for built-in synthetic data."""
    from ..data.synthetic import TASKS

    if isinstance(spec, dict) and "suite" in spec and name.startswith("probes"):
        if set(spec) - {"suite", "shots", "scoring", "name", "holistic"} or not isinstance(spec["suite"], str):
            raise UserError(f"{source}: data {name}: a suite probe is {{suite: PATH, shots, scoring, name, holistic}}")
        if not (Path(spec["suite"]).exists() or Path(source).parent.joinpath(spec["suite"]).exists()):
            raise UserError(f"{source}: data {name}: suite {spec['suite']} does not exist")
        return
    if isinstance(spec, dict) and "path" in spec and not set(spec) - {"path", "split"}:
        spec = spec["path"]
    if isinstance(spec, str):
        local = Path(spec).exists() or Path(source).parent.joinpath(spec).exists()
        if not local and (spec.count("/") != 1 or Path(spec).suffix):
            raise UserError(f"{source}: data {name}: file {spec} does not exist")
        return
    if not isinstance(spec, dict) or set(spec) - {"task", "rows", "seed"} or "task" not in spec:
        raise UserError(f"{source}: data {name}: give a file path, a hub id, {{path, split}} or {{task, rows, seed}}")
    if spec["task"] not in (*TASKS, "docs-qa"):
        raise UserError(f"{source}: data {name}: unknown task '{spec['task']}'; built-in tasks: {', '.join(TASKS)}")
    if not isinstance(spec.get("rows", 100), int) or spec.get("rows", 100) < 1:
        raise UserError(f"{source}: data {name}: rows must be a whole number of at least 1")


def plan(recipe: Recipe) -> list[Step]:
    """The stages in order, each checked against the fields its kind accepts."""
    steps, names = [], {"base"}
    for index, entry in enumerate(recipe.stages, start=1):
        where = f"{recipe.source}: stage {index}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UserError(f"{where}: write each stage as one '- kind: {{options}}' item")
        (kind, options), = entry.items()
        options = options or {}
        if kind not in STAGES:
            raise UserError(f"{where}: unknown stage '{kind}'; stages are {', '.join(STAGES)}")
        if not isinstance(options, dict):
            raise UserError(f"{where} ({kind}): options must be a mapping")
        name = str(options.get("name", kind if kind in ("finetune", "align") else ""))
        _check_stage(kind, options, where, names, recipe.source)
        if kind in ("finetune", "align"):
            if name in names:
                raise UserError(f"{where}: variant name '{name}' is used twice")
            names.add(name)
        steps.append(Step(index, kind, name, options))
    return steps


def _check_stage(kind: str, options: dict, where: str, names: set[str], source: str = "") -> None:
    from ..train.finetune import FinetuneConfig

    if kind == "baseline":
        from .prompting_stage import check_baseline

        check_baseline(options, f"{where} (baseline)", source)
    elif kind == "finetune":
        fields_ = {k: v for k, v in options.items() if k != "name"}
        for taken in ("model", "data", "out", "eval_data"):
            if taken in fields_:
                raise UserError(f"{where} (finetune): '{taken}' comes from the recipe, not the stage")
        FinetuneConfig(**configs.checked(FinetuneConfig, fields_, f"{where} (finetune)"), model="m", data="d", out="o").validate()
    elif kind == "align":
        _check_align(options, where, names, source)
    elif kind == "rag":
        from .rag_stage import check_rag

        check_rag(options, where)
    elif kind == "deploy":
        from .deploy_stage import check_deploy

        check_deploy(options, where, names)
    elif options:
        raise UserError(f"{where} ({kind}): takes no options (got '{sorted(options)[0]}')")


ALIGN_KEYS = ("name", "from", "method", "data")


def align_config(options: dict, where: str):
    """The PPO or DPO config class of an align stage (`method: ppo`, the default, or `dpo`) and its own fields."""
    from ..align.dpo import DPOConfig
    from ..align.ppo import PPOConfig

    method = options.get("method", "ppo")
    if method not in ("ppo", "dpo"):
        raise UserError(f"{where} (align): method must be ppo or dpo (got {method!r})")
    cls = PPOConfig if method == "ppo" else DPOConfig
    return cls, configs.checked(cls, {k: v for k, v in options.items() if k not in ALIGN_KEYS}, f"{where} (align)")


def _check_align(options: dict, where: str, names: set[str], source: str) -> None:
    start = options.get("from")
    if start is not None and start not in names:
        raise UserError(f"{where} (align): 'from: {start}' names no earlier variant ({', '.join(sorted(names))})")
    cls, fields_ = align_config(options, where)
    if cls.__name__ == "DPOConfig":
        if "data" not in options:
            raise UserError(f"{where} (align): method dpo needs data: preference rows (prompt, chosen, rejected)")
        _check_data_spec(options["data"], source or where, f"{where} (align)")
    cls(**fields_, model="m", data="d", out="o").validate()


# ---------------------------------------------------------------- running


class Run:
    """The state of one recipe run: its folder, data files and the variants produced so far."""

    def __init__(self, recipe: Recipe, out: Path, smoke: bool):
        self.recipe, self.out, self.smoke = recipe, out, smoke
        self.variants: dict[str, Variant] = {}
        self.files: dict[str, str] = {}

    def settings(self):
        from ..generate.engine import GenerationSettings

        settings = GenerationSettings(**configs.checked(GenerationSettings, self.recipe.generation, "generation"))
        if self.smoke:
            settings.max_new_tokens = min(settings.max_new_tokens, 8)
        return settings

    def data_file(self, name: str, spec) -> str:
        """A data spec as a local file: synthetic data and hub datasets are written once to OUT/data/NAME.jsonl."""
        if name in self.files:
            return self.files[name]
        target = self.out / "data" / f"{name}.jsonl"
        if isinstance(spec, dict) and spec.get("task") == "docs-qa":  # the synthetic product's questions (rag stage)
            from ..data.synthetic_docs import docs_qa

            rows = docs_qa(spec.get("rows", 100), spec.get("seed", 0))[1]
        elif isinstance(spec, dict) and "task" in spec:
            from ..data.synthetic import generate

            rows = generate(spec["task"], spec.get("rows", 100), spec.get("seed", 0))
        else:
            path, split = (spec["path"], spec.get("split")) if isinstance(spec, dict) else (spec, None)
            local = Path(path) if Path(path).exists() else Path(self.recipe.source).parent / path
            if local.exists() and not self.smoke:
                self.files[name] = str(local)
                return str(local)
            from ..data.io import read_rows

            rows = [row.values for row in read_rows(str(local) if local.exists() else path, split)[0]]
        if self.smoke:
            rows = rows[:SMOKE_ROWS]
        if not target.exists():
            write_jsonl(target, rows)
        self.files[name] = str(target)
        return str(target)

    def data_options(self, path: str):
        from ..data.options import DataOptions

        probe = path in self.probe_files().values()
        return DataOptions(path, template=None if probe else self.recipe.template)

    @property
    def train(self) -> str:
        return self.data_file("train", self.recipe.data["train"])

    @property
    def test(self) -> str:
        return self.data_file("test", self.recipe.data["test"])

    def probe_files(self) -> dict[str, str]:
        result = {}
        for index, spec in enumerate(self.recipe.probes):
            if isinstance(spec, dict) and "suite" in spec:
                continue  # suite_probes()
            label = spec["task"] if isinstance(spec, dict) else Path(spec).stem
            result[label] = self.data_file(f"probe-{index}-{label}", spec)
        return result


def run_recipe(path: str, out: str | None = None, *, dry_run: bool = False, smoke: bool = False, model: str | None = None,
               data: dict | None = None, jobs: int | None = None) -> dict:
    """Run (or with `dry_run`, only check and show) a recipe; returns the variants' metrics (by kind, for a recipe
    with several models: lifecycle/kinds.py)."""
    from .kinds import kind_recipes, run_kinds

    kinds = None if model else kind_recipes(path, data)
    if kinds:
        return run_kinds(kinds, Path(out or f"runs/{next(iter(kinds.values())).name}"), dry_run=dry_run, smoke=smoke, jobs=jobs)
    recipe = load_recipe(path, model, data)
    if dry_run:
        show_plan(recipe)
        return {}
    return variant_metrics(run_steps(recipe, Path(out or f"runs/{recipe.name}"), smoke))


def show_plan(recipe: Recipe, title: str = "") -> None:
    print_table(title or f"recipe {recipe.name}: {recipe.model}", ["#", "stage", "name", "options"],
                [(s.index, s.kind, s.name or "-", json.dumps(s.options) if s.options else "") for s in plan(recipe)])


def run_steps(recipe: Recipe, out: Path, smoke: bool, announce_skips: bool = True) -> Run:
    """Every stage in order into OUT/stages/; a stage whose stage.json exists is restored, not run again."""
    run = Run(recipe, out, smoke)
    for step in plan(recipe):
        folder = run.out / "stages" / step.folder
        done = folder / "stage.json"
        if done.is_file():
            if announce_skips:
                note(f"stage {step.index} ({step.kind} {step.name}) is complete; skipping")
            _restore(run, json.loads(done.read_text()))
            continue
        started = time.perf_counter()
        STAGE_RUNNERS[step.kind](run, step, folder)
        write_json(done, {"seconds": time.perf_counter() - started, "variants": [v.__dict__ for v in run.variants.values()]})
        write_json(run.out / "metrics.json", variant_metrics(run))
    return run


def _restore(run: Run, saved: dict) -> None:
    for record in saved["variants"]:
        run.variants[record["name"]] = Variant(**record)


def variant_metrics(run: Run) -> dict:
    """`{variant: {metric: {"mean", "ci95", "n"}, ..., "probes": {...}, "forgetting": {...}, "cost": {...}}}`."""
    from ..evaluate.forgetting import samples_forgetting

    base_probes = next((v.probes for v in run.variants.values() if v.kind == "prompting" and v.probes), {})
    base_suites = next((v.suites for v in run.variants.values() if v.kind == "prompting" and v.suites), {})
    result = {}
    for variant in run.variants.values():
        entry = dict(variant.metrics)
        if variant.probes:
            entry["probes"] = variant.probes
            if variant.kind != "prompting" and base_probes:
                entry["forgetting"] = {
                    task: round(variant.probes[task]["rougeL"]["mean"] - base_probes[task]["rougeL"]["mean"], 6)
                    for task in variant.probes if task in base_probes
                }
        if variant.suites:
            entry["suites"] = variant.suites
            if variant.kind != "prompting" and base_suites:
                entry["suite_forgetting"] = {task: samples_forgetting(base_suites[task]["samples"], suite["samples"])
                                             for task, suite in variant.suites.items() if task in base_suites}
        if variant.chain_of_thought:
            entry["chain_of_thought"] = variant.chain_of_thought
        entry["cost"] = variant.cost
        result[variant.name] = entry
    return result


# ---------------------------------------------------------------- the stages


def run_finetune(run: Run, step: Step, folder: Path) -> None:
    from ..train.finetune import FinetuneConfig, finetune

    fields_ = {k: v for k, v in step.options.items() if k != "name"}
    cfg = FinetuneConfig(**configs.checked(FinetuneConfig, fields_, "finetune"), model=run.recipe.model, data=run.train,
                         eval_data=run.test, out=str(folder / "run"), template=run.recipe.template)
    if run.smoke:
        cfg.max_steps, cfg.save_every, cfg.eval_every = SMOKE_STEPS, None, None
        if cfg.method == "qlora" and not torch_cuda():
            note("smoke run without CUDA: qlora runs as lora")
            cfg.method = "lora"
    elif cfg.eval_every is None:
        cfg.eval_every = max(1, _steps(cfg, run) // 10)  # a validation curve for the report
    if (folder / "run").exists():  # an interrupted stage: start it again
        import shutil

        shutil.rmtree(folder / "run")
    metrics = finetune(cfg)
    run.variants[step.name] = Variant(step.name, str(folder / "run"), "finetune", cost=_cost(metrics), log=str(folder / "run" / "log.jsonl"))


def _steps(cfg, run: Run) -> int:
    """The optimizer steps `finetune` will run, counted as it counts them (rows of any format, rounded up)."""
    import math

    from ..data.io import read_rows

    rows = len(read_rows(run.train)[0])
    return cfg.max_steps or math.ceil(math.ceil(rows / cfg.batch_size) * cfg.epochs / cfg.grad_accum)


def _cost(metrics: dict) -> dict:
    keys = ("method", "trainable_params", "total_params", "trainable_share", "wall_time_s", "peak_memory_bytes", "size_on_disk_bytes")
    return {key: metrics[key] for key in keys if key in metrics}


def run_eval(run: Run, step: Step, folder: Path) -> None:
    """Score every variant not scored yet on the test data, and every variant on the probes."""
    for variant in run.variants.values():
        if variant.kind == "rag":
            continue  # scored by the rag stage on its own questions; its model is probed as the variant it extends
        if variant.kind != "prompting" and not variant.metrics:
            variant.metrics, variant.predictions = _score(run, variant, run.test, folder / f"{_slug(variant.name)}.jsonl", run.recipe.metrics)
        if not variant.probes and (variant.kind != "prompting" or variant.name == _first_prompting(run)):
            variant.probes = {task: _score(run, variant, path, folder / f"{_slug(variant.name)}.probe-{task}.jsonl", ["rouge"])[0]
                              for task, path in run.probe_files().items()}
        if not variant.suites and (variant.kind != "prompting" or variant.name == _first_prompting(run)):
            variant.suites = {label: _score_suite(run, variant, spec, folder / f"{_slug(variant.name)}.probe-{label}.samples.jsonl")
                              for label, spec in _suite_probes(run.recipe).items()}


def _suite_probes(recipe) -> dict[str, dict]:
    """The recipe's suite probes by label: `name`, else the suite's file or folder name."""
    specs = [spec for spec in recipe.probes if isinstance(spec, dict) and "suite" in spec]
    return {str(spec.get("name") or Path(spec["suite"]).stem): spec for spec in specs}


def _score_suite(run: Run, variant: Variant, spec: dict, samples: Path) -> dict:
    from ..evaluate.benchmark import score_probe

    path = spec["suite"] if Path(spec["suite"]).exists() else str(Path(run.recipe.source).parent / spec["suite"])
    return score_probe(variant.model, path, str(samples), shots=spec.get("shots", 0), scoring=spec.get("scoring", "choice"),
                       limit=SMOKE_ROWS if run.smoke else None, holistic=bool(spec.get("holistic")), settings=run.settings())


def _first_prompting(run: Run) -> str | None:
    return next((v.name for v in run.variants.values() if v.kind == "prompting"), None)


def _score(run: Run, variant: Variant, data: str, predictions: Path, metrics: list[str]) -> tuple[dict, str]:
    """The variant's metrics on `data`; the console table is titled with the data and its column with the variant."""
    from ..evaluate.predictions import evaluate
    from ..models import ModelOptions

    result = evaluate(model=ModelOptions(variant.model), data=run.data_options(data), settings=run.settings(), metrics=metrics,
                      save_predictions=str(predictions), resamples=1000, label=variant.name)
    return result, str(predictions)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def run_align(run: Run, step: Step, folder: Path) -> None:
    """PPO (or DPO) from a variant: an adapter variant keeps training its adapter, against itself as it was."""
    from ..align.dpo import dpo
    from ..align.ppo import ppo

    cls, fields_ = align_config(step.options, "align")
    source = run.variants[step.options["from"]].model if step.options.get("from") else run.recipe.model
    if cls.__name__ == "DPOConfig":
        cfg, train = cls(**fields_, model=source, data=run.data_file(f"{step.folder}-pairs", step.options["data"]),
                         out=str(folder / "run")), dpo
        if run.smoke:
            cfg.max_steps, cfg.batch_size, cfg.save_every = SMOKE_STEPS, 4, None
    else:
        cfg, train = cls(**fields_, model=source, data=run.train, out=str(folder / "run"), template=run.recipe.template), ppo
        if run.smoke:
            cfg.max_steps, cfg.batch_size, cfg.mini_batch_size, cfg.save_every = SMOKE_STEPS, 4, 2, None
    if (folder / "run").exists():
        import shutil

        shutil.rmtree(folder / "run")
    cost = _cost(train(cfg)) | {"from": step.options.get("from", "base")}
    run.variants[step.name] = Variant(step.name, str(folder / "run"), "align", cost=cost, log=str(folder / "run" / "log.jsonl"))


def run_deploy(run: Run, step: Step, folder: Path) -> None:
    from .deploy_stage import run_deploy as deploy

    deploy(run, step, folder)


def _run_baseline(run: Run, step: Step, folder: Path) -> None:
    from .prompting_stage import run_baseline

    run_baseline(run, step, folder)


def _run_rag(run: Run, step: Step, folder: Path) -> None:
    from .rag_stage import run_rag

    run_rag(run, step, folder)


def run_report(run: Run, step: Step, folder: Path) -> None:
    from .report import write_report

    run_eval(run, step, folder)  # nothing unscored reaches the report
    write_json(run.out / "metrics.json", variant_metrics(run))
    write_report(run.out / "report.html", run.recipe, list(run.variants.values()), variant_metrics(run))
    note(f"wrote {run.out / 'report.html'}")


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _size_on_disk(folder: str) -> int:
    path = Path(folder)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


STAGE_RUNNERS = {
    "baseline": _run_baseline, "finetune": run_finetune, "eval": run_eval,
    "align": run_align, "deploy": run_deploy, "rag": _run_rag, "report": run_report,
}
