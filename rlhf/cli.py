"""The `rlhf` command line: the one place that wires roles, Serve, Tune and Jobs together."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rlhf.config import DATA_KINDS, ConfigError, field_docs, load_config

app = typer.Typer(
    help="Distributed RLHF for question-answering assistants: SFT, reward models, PPO/GRPO on Ray "
    "with vLLM rollouts and DeepSpeed ZeRO-3 learners, evaluation, a guarded QA endpoint, sweeps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Validate and convert data sets.", no_args_is_help=True)
models_app = typer.Typer(help="Prepare the packaged models and build tiny test models.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

console = Console(stderr=True)
out = Console()

CONFIG_ARG = typer.Argument(..., help="YAML config file (see examples/).")
OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. algo.kl_coef=0.05 train.steps=10.")


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def not_built(command: str) -> None:
    fail(f"`rlhf {command}` is not built yet in this version; nothing was run.", code=3)


def _load(config: Path, overrides: Optional[list[str]]):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))


# ----------------------------------------------------------------------------- training


@app.command()
def train(
    config: Path = CONFIG_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = typer.Option(None, help="Run directory (default runs/<train.name>/)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the run directory."),
) -> None:
    """Run RL (PPO, GRPO, RLOO, REINFORCE++) with Ray actors: vLLM rollout, reward, reference, ZeRO-3 learner."""
    cfg = _load(config, overrides)
    from actors.driver import run_training
    from actors.launch import ActorFailed
    from rlhf.loop import Interrupted

    try:
        path = run_training(cfg, run_dir=run_dir, resume=resume, console=console)
    except ConfigError as exc:
        fail(str(exc))
    except Interrupted as exc:
        fail(str(exc), code=130)
    except ActorFailed as exc:
        fail(f"{exc}\nthe last checkpoint is intact; rerun with --resume", code=1)
    out.print(str(path), soft_wrap=True)


@app.command()
def sft(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Supervised fine-tuning on QA pairs (DeepSpeed ZeRO-3 through Ray Train)."""
    _load(config, overrides)
    not_built("sft")


@app.command()
def rm(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Train a reward model on preference pairs (Bradley-Terry)."""
    _load(config, overrides)
    not_built("rm")


@app.command()
def dpo(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Direct preference optimisation on preference pairs."""
    _load(config, overrides)
    not_built("dpo")


@app.command("eval")
def evaluate(
    model: Path = typer.Option(..., help="Model folder to evaluate."),
    data: Path = typer.Option(..., help="Held-out QA file with reference answers."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline model folder to compare against."),
) -> None:
    """Evaluate a model on held-out questions and write a report."""
    not_built("eval")


@app.command()
def pipeline(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """SFT, preference pairs, reward model, RL, evaluation and export, as artifact stages."""
    _load(config, overrides)
    not_built("pipeline")


@app.command()
def serve(
    model: Path = typer.Option(..., help="Model folder to serve."),
    config: Optional[Path] = typer.Option(None, help="YAML config (serve section)."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="HTTP port."),
) -> None:
    """Serve the QA assistant on Ray Serve (OpenAI-compatible routes, /ask, feedback)."""
    not_built("serve")


@app.command()
def tune(
    config: Path = CONFIG_ARG,
    space: Path = typer.Option(..., help="Search space YAML over dotted config keys."),
) -> None:
    """Hyperparameter sweeps with Ray Tune."""
    not_built("tune")


@app.command()
def submit(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Submit a training run to a Ray cluster as a Ray job."""
    not_built("submit")


# ----------------------------------------------------------------------------- data


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL, Parquet or CSV file."),
    kind: str = typer.Option(..., help=f"One of: {', '.join(DATA_KINDS)}."),
    out: Optional[Path] = typer.Option(None, help="Write the valid rows here (.parquet or .jsonl)."),
    field: Optional[list[str]] = typer.Option(None, help="Column mapping FILE_NAME=OUR_NAME (repeatable)."),
) -> None:
    """Check a data file: keep good rows, quarantine bad ones with row number and reason."""
    from rlhf import data

    mapping = dict(item.split("=", 1) for item in field or [])
    try:
        result = data.validate_file(file, kind, fields=mapping, out=out)
    except data.DataError as exc:
        fail(str(exc))
    summary = result.summary()
    table = Table(title=f"{file} ({kind})")
    for col in ("rows", "valid", "quarantined"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["rows"]), str(summary["valid"]), str(summary["quarantined"]))
    out.print(table)
    for reason, count in summary["reasons"].items():
        out.print(f"  {count} x {reason}")
    if summary.get("quarantine_file"):
        out.print(f"quarantined rows: {summary['quarantine_file']}")


@data_app.command("pairs")
def data_pairs(config: Path = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Generate k answers per question and judge them into preference pairs."""
    _load(config, overrides)
    not_built("data pairs")


# ----------------------------------------------------------------------------- models


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Convert again even if cached.")) -> None:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a cached HF folder; prints its path."""
    from rlhf.models import prepare_smollm2

    with console.status("converting SmolLM2-135M-Instruct (once)"):
        path = prepare_smollm2(force=force)
    out.print(str(path), soft_wrap=True)


@models_app.command("tiny")
def models_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write."),
    hidden_size: int = typer.Option(64),
    layers: int = typer.Option(2),
    seed: int = typer.Option(0),
) -> None:
    """Write a tiny random Llama with a tokenizer (loads in transformers and vLLM)."""
    from rlhf.models import build_tiny_model

    path = build_tiny_model(out_dir, hidden_size=hidden_size, num_layers=layers, seed=seed, force=True)
    out.print(str(path), soft_wrap=True)


# ----------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Argument(None, help="YAML config (defaults when omitted)."),
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    docs: bool = typer.Option(False, "--docs", help="Also print every field's documentation."),
) -> None:
    """Print the resolved config, optionally with each field's documentation."""
    import yaml

    from rlhf.config import to_dict

    cfg = _load(config, overrides) if config else load_config(None, overrides or [])
    out.print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if docs:
        for key, doc in field_docs().items():
            out.print(f"{key}: {doc}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
