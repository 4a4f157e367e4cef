"""A stage is one file: a stage defined in this file alone, registered, runs in a recipe, with its section in the
report and its entry in metrics.json; the recipe core imports no stage, and the lifecycle's imports have no cycle."""

import ast
import json
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl

import llmcycle.lifecycle
from llmcycle.data.io import read_rows
from llmcycle.errors import UserError
from llmcycle.lifecycle.core import Variant
from llmcycle.lifecycle.recipes import run_recipe
from llmcycle.lifecycle.stages import APART, STAGES, Stage, register
from llmcycle.outputs import write_jsonl as write_output

ECHO = "echo"


def check_echo(options: dict, where: str, names: set, source: str) -> None:
    words = options.get("words", 3)
    if set(options) - {"name", "words"} or not isinstance(words, int) or words < 1:
        raise UserError(f"{where} (echo): takes name and words (a whole number of at least 1)")


def run_echo(run, step, folder: Path) -> None:
    """A variant that needs no model: each test prompt's last `words` words are its answer."""
    rows = [row.values for row in read_rows(run.test)[0]]
    words = step.options.get("words", 3)
    answers = [" ".join(row["prompt"].split()[-words:]) for row in rows]
    write_output(folder / "predictions.jsonl", [{"prompt": row["prompt"], "prediction": answer, "reference": row["completion"]}
                                                for row, answer in zip(rows, answers)])
    hits = [float(answer.split()[-1] in row["completion"]) for row, answer in zip(rows, answers)]
    share = {"mean": sum(hits) / len(hits), "ci95": [min(hits), max(hits)], "n": len(hits)}
    run.variants[step.name] = Variant(step.name, run.recipe.model, ECHO, metrics={"last_word_kept": share},
                                      cost={"trainable_params": 0}, predictions=str(folder / "predictions.jsonl"))


def echo_entry(variant, run) -> dict:
    return {"model_free": True} if variant.stage == ECHO else {}


def echo_section(metrics: dict, variants: list) -> str:
    rows = "".join(f"<tr><td>{v.name}</td><td>{metrics[v.name]['last_word_kept']['mean']:.3f}</td></tr>" for v in variants if v.stage == ECHO)
    return f"<h2>Echo: the prompt's last words as the answer</h2><table>{rows}</table>" if rows else ""


@pytest.fixture
def echo_stage():
    stage = register(Stage(ECHO, check_echo, run_echo, variant_role=APART, names_variant=True, headline=("last_word_kept",),
                           metrics_entry=echo_entry, section=echo_section))
    yield stage
    del STAGES[ECHO]


def echo_recipe(tmp_path: Path, echo_options: dict) -> Path:
    rows = [{"prompt": f"Repeat after me: apples and {fruit}", "completion": f"apples and {fruit}"} for fruit in ("pears", "plums", "figs")]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = tmp_path / "echo.yaml"
    recipe.write_text(json.dumps({"name": "echo", "model": "no-model-needed", "data": {"train": str(data), "test": str(data)},
                                  "stages": [{ECHO: echo_options}, {"report": {}}]}))
    return recipe


def test_a_stage_registered_from_one_file_runs_with_its_report_section_and_metrics(echo_stage, tmp_path, capsys):
    recipe, out = echo_recipe(tmp_path, {"name": "parrot", "words": 2}), tmp_path / "run"
    assert run_cli("run", recipe, "--dry-run") == 0 and "parrot" in capsys.readouterr().out
    metrics = run_recipe(str(recipe), str(out))
    share = {"mean": 1.0, "ci95": [1.0, 1.0], "n": 3}
    assert metrics == {"parrot": {"last_word_kept": share, "model_free": True, "cost": {"trainable_params": 0}}}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "stages/01-echo-parrot/stage.json").is_file() and (out / "stages/01-echo-parrot/predictions.jsonl").is_file()
    html = (out / "report.html").read_text()
    assert "<h2>Echo: the prompt's last words as the answer</h2><table><tr><td>parrot</td><td>1.000</td></tr></table>" in html
    assert "<h2>Quality</h2><table><tr><th>variant</th></tr></table>" in html  # APART: never beside the test data's scores
    capsys.readouterr()
    assert run_recipe(str(recipe), str(out)) == metrics  # restored from its stage.json, not run again
    assert capsys.readouterr().err.count("is complete; skipping") == 2


def test_a_registered_stage_checks_its_options_before_anything_runs(echo_stage, tmp_path, capsys):
    recipe = echo_recipe(tmp_path, {"words": 0})
    assert run_cli("run", recipe, "--out", tmp_path / "out") == 2
    assert "stage 1 (echo): takes name and words" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="registered already"):
        register(echo_stage)


def test_the_core_imports_no_stage_and_the_lifecycle_imports_no_cycle():
    """Every import of an llmcycle.lifecycle module, at module level or inside a function, points one way."""
    root = Path(llmcycle.lifecycle.__file__).parent
    graph = {_module(path, root): _imports(path, root) for path in root.rglob("*.py")}
    assert not [name for name in graph["core"] if name.startswith("stages")] and "runner" not in graph["core"]
    assert not list(root.glob("*_stage.py"))
    done, visiting = set(), []

    def visit(name):
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name not in done:
            visiting.append(name)
            for target in graph.get(name, ()):
                visit(target)
            visiting.pop()
            done.add(name)

    for name in graph:
        visit(name)


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """The lifecycle modules `path` imports (relative imports, resolved against its package)."""
    package = _module(path, root).split(".") if path.name == "__init__.py" else _module(path, root).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and 0 < node.level <= len(package) + 1:  # not above the lifecycle package
            target = [*package[: len(package) - node.level + 1], *(node.module.split(".") if node.module else [])]
            candidates = [".".join([*target, alias.name]) for alias in node.names] + [".".join(target)]
            found |= {name for name in candidates if (root / (name.replace(".", "/") + ".py")).is_file()
                      or (root / name.replace(".", "/") / "__init__.py").is_file()}
    return found - {"", _module(path, root)}
