"""The recipe core: what every stage shares, and the registry of stages.

A recipe as read (`Recipe`), one checked stage of it (`Step`), one way of using the model and what it cost and
scored (`Variant`), the state of a run (`Run`), the contract a stage fulfils (`Stage`) with the dict that holds
them (`STAGES`, filled by `lifecycle/stages/__init__.py`), and the helpers stages share: checking a data spec,
scoring a variant, a training run's cost, a folder's size, metrics.json. This module imports no stage: the
stages import it, so a stage is one file that depends on this one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import config as configs
from ..data.io import read_rows
from ..data.options import DataOptions
from ..data.synthetic import TASKS, generate
from ..data.synthetic_docs import docs_qa
from ..errors import UserError
from ..evaluate.predictions import evaluate
from ..generate.settings import GenerationSettings
from ..models import ModelOptions
from ..outputs import write_jsonl

SMOKE_ROWS, SMOKE_STEPS = 8, 2
"""`--smoke`: every data file cut to this many rows, every training run to this many steps."""

VariantRole = Literal["base", "tuned", "apart"]
BASE, TUNED, APART = "base", "tuned", "apart"
"""What a stage's variants are (`Stage.variant_role`):
BASE: the recipe's model as it comes, scored on the test data by its own stage; the first one is probed, and
  forgetting is measured against it;
TUNED: a model of its own, which `eval` scores on the test data and the probes, its forgetting measured;
APART: scored by its own stage on data of its own; `eval` leaves it alone, and the report shows it only in the
  stage's own section, never beside the test data's scores."""

Finding = tuple[bool | None, str]
"""A report finding: whether what the course teaches held in this run (None: the paired test shows no measurable
difference, so it neither held nor failed), and the sentence saying so (HTML)."""
Figure = tuple[str, str]
"""A report plot: its title and its PNG, base64-encoded."""


@dataclass
class Variant:
    """One way of using the model (prompted, tuned, aligned, deployed) and what it cost and scored."""

    name: str
    model: str
    stage: str
    """The name of the stage that made it: what it is to `eval`, metrics.json and the report."""
    cost: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    chain_of_thought: dict = field(default_factory=dict)
    """A baseline's `cot` result (stages/baseline.py): direct against chain-of-thought accuracy on its own data."""
    suites: dict = field(default_factory=dict)
    """Suite probes: {label: eval --suite's result, with "samples", the per-item file the forgetting test pairs}."""
    predictions: str | None = None
    log: str | None = None
    paired: dict = field(default_factory=dict)
    """metrics.json's `paired`: {other variant: {metric: {absolute, relative, ci95, p_value, n, outcome, ratio}}}, its
    change against an earlier variant on the same rows (lifecycle/paired.py); for a rag variant, against the same model
    without retrieval on the same questions."""
    probe_predictions: dict = field(default_factory=dict)
    """{probe task: its predictions file}, what the forgetting test pairs with the base model's."""
    forgetting_paired: dict = field(default_factory=dict)
    """{probe task: the paired change in ROUGE-L against the base model, with its outcome} (lifecycle/paired.py)."""


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


@dataclass(frozen=True)
class Step:
    """One stage of a recipe, as checked by `plan`."""

    index: int
    """Its place in the recipe, from 1 (names its folder)."""
    stage: str
    """The stage's name: baseline, finetune, eval, align, deploy, rag, report, or one registered later."""
    name: str
    """The variant it makes (a stage that names its variant), else its `name` option, else ''."""
    options: dict
    """The stage's fields as written in the recipe."""

    @property
    def folder(self) -> str:
        return f"{self.index:02d}-{self.stage}" + (f"-{self.name}" if self.name else "").replace("+", "-")


# ---------------------------------------------------------------- the Stage contract and the registry


def _adds_nothing(metrics: dict, variants: list) -> list:
    return []


def _no_html(metrics: dict, variants: list) -> str:
    return ""


def _no_keys(variant: Variant, run: Run) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    """One kind of recipe stage: how its options are checked, how it runs, what it adds to the results.

    Only `name`, `check` and `run` are required; the rest say what a stage adds, and default to nothing.
    """

    name: str
    """Its key in a recipe (`- NAME: {options}`); its folder is OUT/stages/NN-NAME[-VARIANT]."""
    check: Callable[[dict, str, set, str], None]
    """check(options, where, names, source): raise a one-line UserError starting with `where` (the recipe and the
    stage's place) for bad options. `names`: the variants earlier stages name (for `from`); `source`: the recipe."""
    run: Callable[[Run, Step, Path], None]
    """run(run, step, folder): do the stage's work in `folder`; add what it makes to `run.variants`."""
    variant_role: VariantRole = TUNED
    """What its variants are: BASE, TUNED or APART (above)."""
    names_variant: bool = False
    """Its `name` option (default: the stage's name) names one variant, unique, that later stages take `from`."""
    headline: tuple[str, ...] = ("rougeL", "exact_match")
    """The metrics its variants are compared by, models side by side: the first one they have."""
    serves_adapters: bool = False
    """Its variants' adapters are in the `llmcycle serve` command printed for a recipe with several models."""
    metrics_entry: Callable[[Variant, Run], dict] = _no_keys
    """metrics_entry(variant, run): keys it adds to any variant's metrics.json entry (beside its metrics, cost)."""
    findings: Callable[[dict, list], list[Finding]] = _adds_nothing
    """findings(metrics, variants): its findings under the report's 'What each step bought'. Like `section`, it sees
    every variant (a stage whose variants are APART finds what they show), so it picks its own. A finding that says
    one variant is better or worse than another reads the paired test on the same rows (metrics.json's `paired`)."""
    plots: Callable[[dict, list], list[Figure]] = _adds_nothing
    """plots(metrics, variants): its plots, after the report's ROUGE-L bars."""
    cost_table: Callable[[dict, list], str] = _no_html
    """cost_table(metrics, variants): HTML under the report's cost table."""
    section: Callable[[dict, list], str] = _no_html
    """section(metrics, variants): its own HTML section, after the forgetting table; '' when it has nothing.
    Like `findings` and unlike the other hooks (which see the variants compared on the test data), it sees every
    variant."""


STAGES: dict[str, Stage] = {}
"""The registry: every stage a recipe may name, in the order the report lists their parts."""


def register(stage: Stage) -> Stage:
    """Make `stage` available to recipes; returns it."""
    if stage.name in STAGES:
        raise ValueError(f"a stage called {stage.name!r} is registered already")
    if stage.variant_role not in (BASE, TUNED, APART):
        raise ValueError(f"stage {stage.name!r}: variant_role must be BASE, TUNED or APART")
    STAGES[stage.name] = stage
    return stage


def stage_of(variant: Variant) -> Stage:
    return STAGES[variant.stage]


def with_role(variants, role: VariantRole) -> list:
    """The variants whose stage's variants are `role` (BASE, TUNED or APART), in order."""
    return [v for v in variants if stage_of(v).variant_role == role]


def first_base(run: Run) -> Variant | None:
    """The first variant of the recipe's model as it comes: the one probed, that forgetting is measured against."""
    return next(iter(with_role(run.variants.values(), BASE)), None)


def variant_metrics(run: Run) -> dict:
    """metrics.json: `{variant: {metric: {"mean", "ci95", "n"}, ..., what each stage adds, "paired": {...}, "cost": {...}}}`
    (`paired` where the variant was compared with earlier ones on the same rows)."""
    result = {}
    for variant in run.variants.values():
        entry = dict(variant.metrics)
        for stage in STAGES.values():
            entry |= stage.metrics_entry(variant, run)
        if variant.paired:
            entry["paired"] = variant.paired
        result[variant.name] = entry | {"cost": variant.cost}
    return result


# ---------------------------------------------------------------- helpers stages share


def check_no_options(options: dict, where: str) -> None:
    if options:
        raise UserError(f"{where}: takes no options (got '{sorted(options)[0]}')")


def check_data_spec(spec, source: str, name: str) -> None:
    """A file path, a hub id, {path, split} for a hub split, or {task, rows, seed} for built-in synthetic data."""
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


def score(run: Run, variant: Variant, data: str, predictions: Path, metrics: list[str]) -> tuple[dict, str]:
    """The variant's metrics on `data`; the console table is titled with the data and its column with the variant."""
    result = evaluate(model=ModelOptions(variant.model), data=run.data_options(data), settings=run.settings(), metrics=metrics,
                      save_predictions=str(predictions), resamples=1000, label=variant.name)
    return result, str(predictions)


def training_cost(metrics: dict) -> dict:
    """What a training run (finetune, ppo, dpo) cost, from its metrics.json."""
    keys = ("method", "trainable_params", "total_params", "trainable_share", "wall_time_s", "peak_memory_bytes", "size_on_disk_bytes")
    return {key: metrics[key] for key in keys if key in metrics}


def slug(name: str) -> str:
    """A variant's name as a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def start_afresh(folder: Path) -> None:
    """Delete what an interrupted stage left in `folder`: a stage without its stage.json starts again."""
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- a run


class Run:
    """The state of one recipe run: its folder, data files and the variants produced so far."""

    def __init__(self, recipe: Recipe, out: Path, smoke: bool):
        self.recipe, self.out, self.smoke = recipe, out, smoke
        self.variants: dict[str, Variant] = {}
        self.files: dict[str, str] = {}

    def settings(self) -> GenerationSettings:
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
            rows = docs_qa(spec.get("rows", 100), spec.get("seed", 0))[1]
        elif isinstance(spec, dict) and "task" in spec:
            rows = generate(spec["task"], spec.get("rows", 100), spec.get("seed", 0))
        else:
            path, split = (spec["path"], spec.get("split")) if isinstance(spec, dict) else (spec, None)
            local = Path(path) if Path(path).exists() else Path(self.recipe.source).parent / path
            if local.exists() and not self.smoke:
                self.files[name] = str(local)
                return str(local)
            rows = [row.values for row in read_rows(str(local) if local.exists() else path, split)[0]]
        if self.smoke:
            rows = rows[:SMOKE_ROWS]
        if not target.exists():
            write_jsonl(target, rows)
        self.files[name] = str(target)
        return str(target)

    def data_options(self, path: str) -> DataOptions:
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
                continue  # the eval stage's suite probes
            label = spec["task"] if isinstance(spec, dict) else Path(spec).stem
            result[label] = self.data_file(f"probe-{index}-{label}", spec)
        return result
