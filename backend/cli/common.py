"""What every `maskloop` command shares: the console, the refusal of a domain error, progress bars."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from backend.core.errors import DomainError

console = Console()


def fail(error: DomainError) -> NoReturn:
    """Print a domain error and exit 2 (the request was refused)."""
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=2)


def refuse(message: str) -> NoReturn:
    """Print a usage error and exit 2."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


def progress_bar() -> Progress:
    """A progress bar for counted work (import, export, evaluation), naming the item at hand."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[item]}"),
        TimeRemainingColumn(),
        console=console,
    )


def mib(size: int) -> str:
    """A byte count in MiB, for reports."""
    return f"{size / (1 << 20):,.1f} MiB"
