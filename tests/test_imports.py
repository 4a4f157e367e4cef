"""The package's imports run one way (no cycles), and the light commands import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx  # a dependency of torch
import pytest

import llmcycle

PACKAGE_ROOT = Path(llmcycle.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name; a package's `__init__.py` stands for the package."""
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = ("llmcycle",) + path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The dotted module a `from ... import` statement names, with relative levels resolved against the importer."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(importer: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `importer` imports anywhere in its source: top level, in functions, under TYPE_CHECKING.

    `from pkg import name` counts as importing `pkg.name` where that is a submodule, and `pkg` otherwise.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, is_package)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {name for name in found if name in modules and name != importer}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle in each group of modules that import each other, as a path back to where it starts."""
    digraph = networkx.DiGraph([(importer, imported) for importer, targets in graph.items() for imported in targets])
    cycles = []
    for group in networkx.strongly_connected_components(digraph):
        if len(group) > 1:
            edges = networkx.find_cycle(digraph.subgraph(group), source=min(group))
            cycles.append([edge[0] for edge in edges] + [edges[0][0]])
    return sorted(cycles)


def test_graph_reads_relative_and_function_level_imports(tmp_path):
    """The graph builder itself: relative levels, submodules named by `from pkg import`, imports in functions."""
    modules = {name: tmp_path for name in ("llmcycle.a", "llmcycle.b", "llmcycle.b.c", "llmcycle.errors")}
    source = tmp_path / "a.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom .b import c\nif TYPE_CHECKING:\n    from . import errors\n"
        "def later():\n    import llmcycle.b\n",
        encoding="utf-8",
    )
    assert imported_modules("llmcycle.a", source, modules) == {"llmcycle.b.c", "llmcycle.errors", "llmcycle.b"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def run_python(program: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["plan", "compute", "--params", "7B"]], ids=" ".join)
def test_light_commands_import_no_torch(argv):
    """Listing the verbs and the compute planner need no tensors: torch stays unimported, so they answer at once."""
    result = run_python(
        "import sys\nfrom llmcycle.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]


# Their flags are made from configs defined beside the trainers (train/finetune.py, align/*.py), which import torch.
HEAVY_HELP = {"finetune", "pretrain", "reward", "align"}


def test_each_verbs_help_imports_no_torch():
    """Every verb's --help in turn, in one process: the first that imports torch is named."""
    result = run_python(
        "import sys, click\nfrom llmcycle.cli import cli, main\n"
        "def paths(group, prefix):\n"
        "    for name, command in group.commands.items():\n"
        "        yield [*prefix, name]\n"
        "        if isinstance(command, click.Group):\n"
        "            yield from paths(command, [*prefix, name])\n"
        f"for path in paths(cli, []):\n    if path[0] in {sorted(HEAVY_HELP)!r}:\n        continue\n"
        "    try:\n        main([*path, '--help'])\n    except SystemExit as exc:\n        assert not exc.code, (path, exc.code)\n"
        "    assert 'torch' not in sys.modules, f\"llmcycle {' '.join(path)} --help imported torch\"\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
