"""Recipes over several models: the same stages on each, side by side in one report.

```yaml
models:
  t5: embedded-t5                                  # a label and a model, or:
  llama: {model: embedded-llama, stages: {full: {lr: 1.0e-3}, lora+ppo: {lr: 1.0e-4}}}
```
`stages` changes a stage's options for that model only, by the stage's name (its `name`, else the stage's), because
two architectures rarely share a learning rate; `generation` changes the recipe's generation settings for it.
Each model runs the whole recipe in `OUT/LABEL/` (its stages, its metrics.json and report.html, exactly as a
one-model recipe writes them); then `OUT/metrics.json` holds one block per label (`{"t5": {variant: ...},
"llama": {...}}`) and `OUT/report.html` puts the models side by side, with each model's full report below and
how to serve what was tuned.
"""

from __future__ import annotations

import copy
import html
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

from .. import config as configs
from .. import console
from ..console import note, print_table
from ..data.io import read_rows
from ..errors import UserError
from ..outputs import atomic_open, write_json
from .core import Run, stage_of, variant_metrics
from .report import html_page, outcome_class, pair_outcome
from .runner import plan, recipe_from, run_steps, show_plan
from .stages.report import print_run_findings, report_parts

LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def model_data(data: dict, source: str) -> dict[str, dict]:
    """Each label's recipe fields: the shared ones, its model, and the stages with its changes applied."""
    models = data["models"]
    if "model" in data:
        raise UserError(f"{source}: give 'model' or 'models', not both")
    if not isinstance(models, dict) or not models:
        raise UserError(f"{source}: 'models' must map labels to models, e.g. {{t5: embedded-t5, llama: embedded-llama}}")
    shared = {key: value for key, value in data.items() if key != "models"}
    return {str(label): _one_model(shared, str(label), spec, source) for label, spec in models.items()}


def _one_model(shared: dict, label: str, spec, source: str) -> dict:
    where = f"{source}: models.{label}"
    if not label or set(label) - LABEL_CHARS:
        raise UserError(f"{where}: a label is lower-case letters, digits, '-' and '_' (it names a folder)")
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict) or "model" not in spec or set(spec) - {"model", "stages", "generation"}:
        raise UserError(f"{where}: give a model, or {{model: M, stages: {{STAGE_NAME: {{option: value}}}}, generation: {{...}}}}")
    generation = spec.get("generation") or {}
    if not isinstance(generation, dict):
        raise UserError(f"{where}.generation: map generation settings to values, e.g. {{no_repeat_ngram_size: 4}}")
    recipe = {**shared, "model": str(spec["model"]), "stages": _changed_stages(shared.get("stages"), spec.get("stages") or {}, where)}
    if generation:
        recipe["generation"] = {**(shared.get("generation") or {}), **generation}
    return recipe


def _changed_stages(stages, changes, where: str):
    """A copy of the recipe's stages with this model's changes applied (by the stage's `name`, else the stage)."""
    if not isinstance(changes, dict) or not all(isinstance(v, dict) for v in changes.values()):
        raise UserError(f"{where}.stages: map a stage's name to the options to change, e.g. {{full: {{lr: 1.0e-3}}}}")
    stages = copy.deepcopy(stages)
    found = set()
    for entry in stages if isinstance(stages, list) else []:
        if isinstance(entry, dict) and len(entry) == 1:
            (stage, options), = entry.items()
            key = str((options or {}).get("name", stage))
            if key in changes:
                entry[stage] = {**(options or {}), **changes[key]}
                found.add(key)
    missing = sorted(set(changes) - found)
    if missing:
        raise UserError(f"{where}.stages: no stage is called '{missing[0]}' (a stage's name, else its kind)")
    return stages


def model_recipes(path: str, data_overrides: dict | None = None) -> dict | None:
    """{label: Recipe} for a recipe with `models`; None for a one-model recipe."""
    data = configs.read_yaml(path)
    if "models" not in data:
        return None
    return {label: recipe_from(fields, str(path), None, data_overrides) for label, fields in model_data(data, str(path)).items()}


def run_models(recipes: dict, out: Path, *, dry_run: bool = False, smoke: bool = False, jobs: int | None = None) -> dict:
    """Run the recipe for each model in OUT/LABEL (`jobs` models at once, in processes of their own), then write
    the side-by-side metrics.json and report."""
    if dry_run:
        for label, recipe in recipes.items():
            show_plan(recipe, f"recipe {recipe.name}, {label}: {recipe.model}")
        return {}
    jobs = min(len(recipes), jobs or os.cpu_count() or 1)
    if jobs > 1:
        run_in_processes(recipes, out, smoke, jobs)
    runs = {}
    for label, recipe in recipes.items():  # after processes: every stage is complete, so this only reads them back
        if jobs == 1:
            note(f"{label}: the recipe on {recipe.model}, into {out / label}")
        runs[label] = run_steps(recipe, out / label, smoke, announce_skips=jobs == 1)
    metrics = {label: variant_metrics(run) for label, run in runs.items()}
    write_json(out / "metrics.json", metrics)
    serving = {label: serve_instructions(run, 8000 + i) for i, (label, run) in enumerate(runs.items())}
    write_side_by_side(out / "report.html", runs, metrics, serving)
    print_side_by_side(metrics, headline_orders(runs))
    for label, run in runs.items():
        print_run_findings(run, metrics[label], f"{label}: what each step bought")
    for label, (command, snippet) in serving.items():  # results, so on stdout, unwrapped: they are to be copied
        console.out.print(f"serve the {label} model and its tuned adapters:\n{command}\nthen, from Python:\n{snippet}\n",
                          markup=False, highlight=False, soft_wrap=True)
    note(f"wrote {out / 'report.html'}")
    return metrics


# ---------------------------------------------------------------- one process a model


def run_in_processes(recipes: dict, out: Path, smoke: bool, jobs: int) -> None:
    """Each model's recipe in a process of its own, the CPU's cores split between them (token-by-token generation
    of a small model keeps one thread busy, not two), its console in OUT/LABEL/console.log; here, a line as each
    stage completes. A failed model stops the others and its error is raised here."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    waiting, running, seen = list(recipes.items()), {}, set()
    stages = {label: len(plan(recipe)) for label, recipe in recipes.items()}
    note(f"{', '.join(recipes)}: {jobs} at a time, {threads} thread{'s' * (threads > 1)} each; each model's console goes to "
         f"{out}/LABEL/console.log")
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                label, recipe = waiting.pop(0)
                (out / label).mkdir(parents=True, exist_ok=True)
                running[label] = context.Process(target=_run_one, args=(recipe, str(out / label), smoke, threads), name=label)
                running[label].start()
            time.sleep(1)
            for label in list(running):
                _announce(label, out / label, stages[label], seen)
                if not running[label].is_alive():
                    if running.pop(label).exitcode != 0:
                        raise UserError(f"{label}: {_last_error(out / label / 'console.log')} (its log: {out / label / 'console.log'})")
    finally:
        for process in running.values():
            process.terminate()
            process.join()


def _run_one(recipe, out: str, smoke: bool, threads: int) -> None:
    """A model's recipe, in a process started by run_in_processes, printing to OUT/console.log."""
    torch.set_num_threads(threads)
    log = open(Path(out) / "console.log", "a", buffering=1)  # noqa: SIM115 (the process's stdout and stderr until it exits)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        run_steps(recipe, Path(out), smoke)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _announce(label: str, folder: Path, stages: int, seen: set) -> None:
    for done in sorted(folder.glob("stages/*/stage.json")):
        if (label, done.parent.name) not in seen:
            seen.add((label, done.parent.name))
            seconds = json.loads(done.read_text()).get("seconds", 0)
            note(f"{label}: stage {done.parent.name.split('-', 1)[0].lstrip('0')}/{stages} {done.parent.name.split('-', 1)[1]} "
                 f"done in {seconds:.0f} s")


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["stopped without a message"])[-1]


# ---------------------------------------------------------------- side by side


def headline_orders(runs: dict) -> dict[str, tuple[str, ...]]:
    """{variant: the metrics it is compared by, in order}, as the stage that made it says (`Stage.headline`)."""
    orders = {}
    for run in runs.values():
        for name, variant in run.variants.items():
            orders.setdefault(name, stage_of(variant).headline)
    return orders


def headline(entry: dict, order: tuple[str, ...]) -> tuple[str, dict | None]:
    """The first metric of `order` that the metrics.json entry holds, and its summary."""
    for metric in order:
        if isinstance(entry.get(metric), dict):
            return metric, entry[metric]
    return "-", None


def _rows(metrics: dict) -> list[str]:
    names = []
    for block in metrics.values():
        names += [name for name in block if name not in names]
    return names


def print_side_by_side(metrics: dict, orders: dict) -> None:
    labels = list(metrics)
    rows = []
    for name in _rows(metrics):
        entries = [metrics[label].get(name) for label in labels]
        metric = next((headline(e, orders[name])[0] for e in entries if e), "-")
        cells = []
        for entry in entries:
            summary = (entry or {}).get(metric)
            cells.append("-" if not isinstance(summary, dict) else f"{summary['mean']:.3f} [{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}]")
        tox = [(e or {}).get("toxicity", {}).get("mean") for e in entries]
        rows.append((name, metric, *cells, " / ".join("-" if t is None else f"{t:.3f}" for t in tox)))
    print_table("the lifecycle, model by model", ["variant", "metric", *labels, "toxicity " + " / ".join(labels)], rows)


def serve_instructions(run: Run, port: int) -> tuple[str, str]:
    """The `llmcycle serve` command for the base model with every tuned adapter of the run, and an openai call."""
    base = run.recipe.model
    adapters = [(name, Path(v.model) / "adapter") for name, v in run.variants.items()
                if stage_of(v).serves_adapters and (Path(v.model) / "adapter" / "adapter_config.json").is_file()]
    lines = [f"llmcycle serve --model {base} --port {port}", *(f"--adapter {name.replace('+', '-')}={path}" for name, path in adapters)]
    command = " \\\n    ".join(lines)
    first = adapters[0][0].replace("+", "-") if adapters else base
    prompt = _example_prompt(run)
    block = (run.recipe.generation or {}).get("no_repeat_ngram_size")
    # the report's n-gram block travels as vLLM's extensions do, an extra body field, so the reply equals the report's
    extra = f", extra_body={{'no_repeat_ngram_size': {block}}}" if block else ""
    snippet = ("from openai import OpenAI\n"
               f"client = OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='none')\n"
               f"reply = client.completions.create(model={first!r}, prompt={prompt!r}, max_tokens=64, temperature=0{extra})\n"
               "print(reply.choices[0].text)")
    return command, snippet


def _example_prompt(run: Run) -> str:
    rows = read_rows(run.test)[0]
    return str(rows[0].values.get("prompt", "")) if rows else ""


def write_side_by_side(path: Path, runs: dict, metrics: dict, serving: dict) -> None:
    first = next(iter(runs.values())).recipe
    labels, orders = list(runs), headline_orders(runs)
    head = "".join(f"<th>{html.escape(label)}<br><span class='ci'>{html.escape(runs[label].recipe.model)}</span></th>" for label in labels)
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{headline(next(e for e in (metrics[l].get(name) for l in labels) if e), orders[name])[0]}</td>"
                   + "".join(_cell(metrics[label].get(name), orders[name]) for label in labels) + "</tr>"
                   for name in _rows(metrics))
    parts = [f"<h1>llmcycle: {html.escape(first.name)}, {' and '.join(labels)} side by side</h1>",
             f"<p>{html.escape(first.description)}</p>" if first.description else "",
             "<h2>Every stage, model by model</h2>",
             f"<table><tr><th>variant</th><th>metric</th>{head}</tr>{body}</table>",
             "<p class='ci'>mean [95% bootstrap interval], green or red where the paired 95% interval against zero-shot "
             "prompting on the same rows excludes 0 (better or worse); repetition: share of outputs saying one sentence three "
             "or more times; rag variants (rag, docs-ft, ...) answer the documentation questions (exact match), the rest the test "
             "data (ROUGE-L). '-': not measured for that model.</p>",
             "<h2>Serve what was tuned</h2>", *(_serve_block(label, *serving[label]) for label in labels)]
    for label, run in runs.items():
        parts.append(f"<hr><section id='{label}'>")
        title, *rest = report_parts(run.recipe, list(run.variants.values()), metrics[label], heading="h2")
        rest = [part for part in rest if part != f"<p>{html.escape(first.description)}</p>"]  # said once, at the top
        parts += [title.replace("llmcycle: ", f"{html.escape(label)}: "), *(p.replace("<h2>", "<h3>").replace("</h2>", "</h3>") for p in rest)]
        parts.append("</section>")
    with atomic_open(path) as handle:
        handle.write(html_page(f"llmcycle {first.name}", parts))


def _cell(entry: dict | None, order: tuple[str, ...]) -> str:
    """The variant's headline with its interval, coloured where the paired test against zero-shot prompting on the same
    rows (metrics.json's `paired`; for a variant with retrieval, zero-shot without it) shows it better or worse."""
    if not entry:
        return "<td>-</td>"
    metric, summary = headline(entry, order)
    if summary is None:
        return "<td>-</td>"
    low, high = summary["ci95"]
    klass = outcome_class(pair_outcome(metric, entry.get("paired", {}).get("zero-shot", {}).get(metric)))
    extra = "".join(f"<br><span class='ci'>{key} {entry[key]['mean']:.3f}</span>" for key in ("toxicity", "repetition")
                    if isinstance(entry.get(key), dict))
    return f"<td><span class='{klass}'>{summary['mean']:.3f}</span> <span class='ci'>[{low:.3f}, {high:.3f}]</span>{extra}</td>"


def _serve_block(label: str, command: str, snippet: str) -> str:
    return (f"<p><b>{html.escape(label)}</b>: start the server (the base model once, every adapter by name), then call it "
            f"with the openai client:</p><pre>{html.escape(command)}</pre><pre>{html.escape(snippet)}</pre>")
