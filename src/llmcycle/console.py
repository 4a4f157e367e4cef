"""Where llmcycle talks to people: notes and progress go to stderr, results (tables, completions) to stdout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

out = Console()
err = Console(stderr=True, soft_wrap=True)
if not out.is_terminal:
    out.width = 120  # rich assumes 80 columns in pipes and logs, too narrow for metric tables


def note(message: str) -> None:
    """A one-line remark about what is happening (a pad token added, rows skipped, ...)."""
    err.print(f"[dim]{message}[/dim]", highlight=False)


def progress() -> Progress:
    """A progress bar for long work; rich hides it when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    out.print(table)
