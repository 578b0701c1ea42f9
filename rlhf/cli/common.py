"""What every part of the `rlhf` command line shares: consoles, progress lines, errors, config loading."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError

console = Console(stderr=True)  # progress, tables about the run, errors
out = Console()  # results a script may read (paths, ids)

CONFIG_ARG = typer.Argument(..., help="YAML config file (see examples/).")
OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. algo.kl_coef=0.05 train.steps=10.")


def say(message: str) -> None:
    """A progress line, printed as is ("[sft] ..." is not rich markup)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def load(config: Path | None, overrides: list[str] | None):
    """The checked config, or a clear error naming the field."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
