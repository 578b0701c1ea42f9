"""`rlhf data validate|pairs|askers|feedback-export` and `rlhf models prepare|tiny`: data sets and models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rlhf.cli.common import CONFIG_ARG, OVERRIDES_ARG, console, fail, load, out
from rlhf.data.kinds import SCHEMAS
from rlhf.data.readers import DataError
from rlhf.data.tables import quarantine_path_for, validate_file

data_app = typer.Typer(help="Validate and convert data sets.", no_args_is_help=True)
models_app = typer.Typer(help="Prepare the packaged models and build tiny test models.", no_args_is_help=True)


# ----------------------------------------------------------------------------- data


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL, Parquet or CSV file."),
    kind: str = typer.Option(..., help=f"One of: {', '.join(SCHEMAS)}."),
    out_file: Path | None = typer.Option(None, "--out", help="Write the valid rows here (.parquet or .jsonl)."),
    field: list[str] | None = typer.Option(None, help="Column mapping FILE_NAME=OUR_NAME (repeatable)."),
) -> None:
    """Check a data file: keep good rows, quarantine bad ones with row number and reason."""

    mapping = dict(item.split("=", 1) for item in field or [])
    try:
        result = validate_file(file, kind, fields=mapping, out=out_file)
    except DataError as exc:
        fail(str(exc))
    summary = result.summary()
    table = Table(title=f"{file} ({kind})")
    for col in ("rows", "valid", "quarantined"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["rows"]), str(summary["valid"]), str(summary["quarantined"]))
    out.print(table)
    for reason, count in summary["reasons"].items():
        out.print(f"  {count} x {reason}", markup=False, highlight=False)
    if result.quarantined:
        # The same place validate_file wrote it.
        qfile = (quarantine_path_for(out_file) if out_file
                 else file.with_name(f"{file.stem}.{kind}.quarantine.jsonl"))
        out.print(f"quarantined rows: {qfile}", soft_wrap=True, markup=False, highlight=False)


@data_app.command("pairs")
def data_pairs(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
               model: str | None = typer.Option(None, help="Model that answers (default model.path)."),
               out_file: Path = typer.Option(Path("pairs.parquet"), "--out", help="Pairs file to write."),
               ) -> None:
    """Generate k answers per question and judge them against the reference into preference pairs."""
    from rlhf.supervised.inputs import generate_pairs

    cfg = load(config, overrides)
    try:
        info = generate_pairs(cfg, model or cfg.model.path, out_file)
    except DataError as exc:
        fail(str(exc))
    out.print(f"{info['pairs']} pairs from {info['questions']} questions -> {info['file']}")


@data_app.command("askers")
def data_askers(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
                model: str | None = typer.Option(None, help="Model that answers (default model.path)."),
                out_file: Path = typer.Option(Path("askers.parquet"), "--out", help="QA file to write."),
                per_question: int = typer.Option(3, help="Asked variants of each question."),
                sums: int = typer.Option(30, help="Small sums among the questions (their answers computed)."),
                refusals: int = typer.Option(0, help="Also refuse this many of the guard half's harmful requests "
                                                     "and as many jailbreaks; answer up to twice as many benign "
                                                     "look-alikes."),
                ) -> None:
    """Consistency data against asker bias: the model's answer to each bare question (a small
    sum's computed one), also as the answer when someone (a name, non-native phrasing) asks it;
    a QA file for sft.data."""
    from rlhf.redteam.consistency import generate

    cfg = load(config, overrides)
    try:
        info = generate(cfg, model or cfg.model.path, out_file, per_question, sums=sums, refusals=refusals)
    except DataError as exc:
        fail(str(exc))
    out.print(f"{info['rows']} rows ({info['refusals']} refusals) from {info['kept']} of {info['questions']} "
              f"questions -> {info['file']}")


@data_app.command("feedback-export")
def data_feedback_export(
    db: Path = typer.Argument(..., help="Feedback SQLite file of the QA endpoint (serve.feedback_db)."),
    out_dir: Path = typer.Argument(..., help="Folder for ratings.jsonl, preferences.jsonl, corrections.jsonl."),
) -> None:
    """Export endpoint feedback as ratings and preference pairs (for `rlhf rm` / `rlhf dpo`) and corrections (qa)."""
    from rlhf.human.feedback import export_feedback

    try:
        written = export_feedback(db, out_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    table = Table(title=f"feedback from {db}")
    for col in ("file", "kind", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for info in written.values():
        table.add_row(escape(info["path"]), info["kind"], str(info["rows"]))
    out.print(table)


# ----------------------------------------------------------------------------- models


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Convert again even if cached.")) -> None:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a cached HF folder; prints its path."""
    from rlhf.models.packaged import prepare_smollm2

    with console.status("converting SmolLM2-135M-Instruct (once)"):
        path = prepare_smollm2(force=force)
    out.print(str(path), soft_wrap=True)


@models_app.command("tiny")
def models_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write."),
    hidden_size: int = typer.Option(
        128, help="Width; 2 heads, so 128 gives head_dim 64 (vLLM CPU attention supports it)."),
    layers: int = typer.Option(2),
    seed: int = typer.Option(0),
) -> None:
    """Write a tiny random Llama with a tokenizer (loads in transformers and vLLM)."""
    from rlhf.models.tiny import build_tiny_model

    path = build_tiny_model(out_dir, hidden_size=hidden_size, num_layers=layers, seed=seed, force=True)
    out.print(str(path), soft_wrap=True)


