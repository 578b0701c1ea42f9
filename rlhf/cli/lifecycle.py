"""`rlhf models list|show|register|promote|rollback`: the model registry (rlhf/lifecycle/registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from rlhf.cli.common import fail, out, say
from rlhf.cli.data import models_app
from rlhf.lifecycle.registry import Registry, RegistryError

REGISTRY_OPT = typer.Option(Path("runs/registry"), "--registry", help="Registry folder.")


def _registry(root: Path) -> Registry:
    return Registry(root)


@models_app.command("list")
def models_list(registry: Path = REGISTRY_OPT) -> None:
    """Every version, oldest first: status, source, parent, gates, when it was registered."""
    try:
        versions = _registry(registry).versions()
    except RegistryError as exc:
        fail(str(exc))
    table = Table(title=f"model versions in {registry}")
    for col in ("version", "status", "source", "parent", "evaluation", "red team", "registered"):
        table.add_column(col)
    for v in versions:
        gate = {True: "passed", False: "FAILED", None: "-"}
        table.add_row(v["version"], v["status"], v["source"], v["parent"] or "-",
                      gate[(v.get("evaluation") or {}).get("passed")], gate[(v.get("redteam") or {}).get("passed")],
                      v["created"])
    out.print(table)


@models_app.command("show")
def models_show(version: str = typer.Argument(..., help="A version, e.g. v2, or `live`."),
                registry: Path = REGISTRY_OPT) -> None:
    """One version's full record (lineage, data hashes, config, results, events) as JSON."""
    reg = _registry(registry)
    try:
        record = reg.live() if version == "live" else reg.get(version)
    except RegistryError as exc:
        fail(str(exc))
    if record is None:
        fail(f"{registry}: no version is live yet")
    out.print_json(json.dumps(record, default=str))


@models_app.command("register")
def models_register(model: Path = typer.Argument(..., help="An exported model folder."),
                    registry: Path = REGISTRY_OPT,
                    parent: str | None = typer.Option(None, help="The version it was trained from."),
                    source: str = typer.Option("manual", help="What made it: pipeline, train, round, manual."),
                    ) -> None:
    """Add a model folder as the next candidate version; prints its name."""
    try:
        version = _registry(registry).register(model, source=source, parent=parent)
    except RegistryError as exc:
        fail(str(exc))
    out.print(version["version"])


@models_app.command("promote")
def models_promote(version: str = typer.Argument(...), registry: Path = REGISTRY_OPT,
                   force: bool = typer.Option(False, help="Promote even though a gate failed."),
                   note: str = typer.Option("", help="Why, kept in the version's events.")) -> None:
    """Make a version live (`rlhf models show live` names it); the live one before is retired."""
    try:
        record = _registry(registry).promote(version, force=force, note=note)
    except RegistryError as exc:
        fail(str(exc))
    say(f"{record['version']} is live ({record['path']})")


@models_app.command("rollback")
def models_rollback(registry: Path = REGISTRY_OPT,
                    note: str = typer.Option("", help="Why, kept in the version's events.")) -> None:
    """Make the version that was live before the current one live again."""
    try:
        record = _registry(registry).rollback(note=note)
    except RegistryError as exc:
        fail(str(exc))
    say(f"rolled back: {record['version']} is live ({record['path']})")
