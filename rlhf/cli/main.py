"""The `rlhf` command line: the one place that wires roles, Serve, Tune and Jobs together."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rlhf.cli.common import CONFIG_ARG, OVERRIDES_ARG, console, fail, load, out, say
from rlhf.cli.data import data_app, models_app
from rlhf.cli.jobs import jobs_app, submit
from rlhf.cli.lifecycle import models_list  # noqa: F401 - registers `rlhf models list|show|...`
from rlhf.cli.monitor import monitor
from rlhf.cli.review import review_app, round_command
from rlhf.cli.safety import guard_app, redteam
from rlhf.config.tree import field_docs, load_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.data.readers import DataError

app = typer.Typer(
    help="Distributed RLHF for question-answering assistants: SFT, reward models, PPO/GRPO on Ray "
    "with vLLM rollouts and DeepSpeed ZeRO-3 learners, evaluation, a guarded QA endpoint, sweeps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(jobs_app, name="jobs")  # rlhf/cli/jobs.py
app.command()(submit)
app.command()(monitor)  # production numbers per version (rlhf/cli/monitor.py)

# ----------------------------------------------------------------------------- training


@app.command()
def train(
    config: Path = CONFIG_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    run_dir: Path | None = typer.Option(None, help="Run directory (default runs/<train.name>/)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the run directory."),
    registry: Path | None = typer.Option(None, help="Register the exported policy there as a candidate version."),
) -> None:
    """Run RL (PPO, GRPO, RLOO, REINFORCE++) with Ray actors: vLLM rollout, reward, reference, ZeRO-3 learner."""
    from rlhf.models.runtime import preflight

    cfg = load(config, overrides)
    try:
        preflight(cfg)  # before Ray or any actor starts
    except ConfigError as exc:
        fail(str(exc))
    from actors.launch import run_training
    from actors.recovery import ActorFailed
    from rlhf.rl.trainer import Interrupted

    try:
        path = run_training(cfg, run_dir=run_dir, resume=resume, console=console)
    except ConfigError as exc:
        fail(str(exc))
    except Interrupted as exc:
        fail(str(exc), code=130)
    except ActorFailed as exc:
        fail(f"{exc}\nthe last checkpoint is intact; rerun with --resume", code=1)
    if registry is not None and cfg.train.export:
        from rlhf.lifecycle.lineage import register_training
        from rlhf.lifecycle.registry import Registry

        version = register_training(Registry(registry), path, cfg)
        say(f"[registry] {version['version']} ({version['status']}) in {registry}")
    out.print(str(path), soft_wrap=True)


OUT_OPT = typer.Option(None, "--out", help="Output folder (default runs/<train.name>/<stage>).")


RESUME_OPT = typer.Option(False, help="Continue from the run's last checkpoint (<stage>.save_every).")


def _finetune(kind: str, cfg, out_path: Path | None, paths: list[str] | None = None, resume: bool = False) -> None:
    from rlhf.models.paths import ModelError
    from rlhf.supervised.inputs import finetune_job
    from rlhf.supervised.trainer import run_finetune

    stage = getattr(cfg, kind)
    out_dir = out_path or Path("runs") / cfg.train.name / kind
    try:
        job = finetune_job(kind, cfg, out_dir, paths)
    except (DataError, ModelError) as exc:
        fail(str(exc))
    with console.status(f"{kind}: training on {len(job.train)} examples with {stage.num_workers} ZeRO-3 workers"):
        rows = run_finetune(job, cfg, log=say, resume=resume)
    table = Table(title=f"{kind} validation")
    keys = [k for k in rows[-1] if k.startswith("val/")]
    for col in ["step", *keys]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row["step"]), *[f"{row[k]:.4f}" for k in keys])
    out.print(table)
    out.print(str(out_dir), soft_wrap=True)


@app.command()
def sft(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
        out_dir: Path | None = OUT_OPT, resume: bool = RESUME_OPT) -> None:
    """Supervised fine-tuning on QA pairs (answer tokens only; DeepSpeed ZeRO-3 through Ray Train)."""
    _finetune("sft", load(config, overrides), out_dir, resume=resume)


@app.command()
def rm(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
       pairs: list[str] | None = typer.Option(None, help="Preference/ratings/rankings files (repeatable)."),
       out_dir: Path | None = OUT_OPT, resume: bool = RESUME_OPT) -> None:
    """Train a reward model on preference pairs (Bradley-Terry) through Ray Train."""
    _finetune("rm", load(config, overrides), out_dir, pairs, resume)


@app.command()
def dpo(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
        pairs: list[str] | None = typer.Option(None, help="Preference/ratings/rankings files (repeatable)."),
        out_dir: Path | None = OUT_OPT, resume: bool = RESUME_OPT) -> None:
    """Direct preference optimisation on preference pairs, the offline alternative to RM + RL."""
    _finetune("dpo", load(config, overrides), out_dir, pairs, resume)


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., help="Model folder to evaluate (or `smollm2`, `tiny`)."),
    data: str | None = typer.Option(None, help="Held-out QA or prompts file with reference answers, "
                                       "or gym:<task> (default: eval.data)."),
    baseline: str | None = typer.Option(None, help="Baseline model folder to compare against."),
    out_dir: Path = typer.Option(Path("runs/eval"), "--out", help="Report folder."),
    config: Path | None = typer.Option(None, help="YAML config (eval and model sections)."),
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Evaluate a model on held-out questions (accuracy, quality proxies, win rate and KL
    against a baseline) and write report.md, report.json, answers.jsonl and plots."""
    cfg = load(config, overrides)
    from rlhf.data.readers import DataError
    from rlhf.evaluation.heldout import evaluate as run_eval
    from rlhf.evaluation.report import summary_rows
    from rlhf.models.paths import ModelError

    try:
        result = run_eval(model, data or cfg.eval.data, out_dir, cfg, baseline=baseline)
    except (DataError, ModelError) as exc:
        fail(str(exc))
    header, rows = summary_rows(result)
    table = Table(title=f"{result['data']['source']} ({result['n']} questions)")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)
    out.print(f"report: {result['files']['report.md']}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def pipeline(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
             run_dir: Path | None = typer.Option(None, help="Artifacts folder (default pipeline.run_dir).")) -> None:
    """SFT, preference pairs, reward model, RL, evaluation and export, as artifact stages."""
    import json

    from actors.launch import run_training
    from rlhf.cluster.resources import local_cpus
    from rlhf.cluster.session import shared_session
    from rlhf.data.readers import DataError
    from rlhf.pipeline.runner import Pipeline, StageError

    cfg = load(config, overrides)
    folder = (run_dir or Path(cfg.pipeline.run_dir)).resolve()
    try:
        with shared_session(local_cpus(cfg)):  # one local Ray for SFT, RM, DPO and RL
            Pipeline(cfg, folder, run_training, log=say).run()
    except (StageError, DataError, ConfigError) as exc:
        fail(str(exc))
    summary_path = folder / "summary.json"
    if summary_path.exists() and cfg.pipeline.registry:
        from rlhf.lifecycle.lineage import register_pipeline
        from rlhf.lifecycle.registry import Registry

        registry = Registry(cfg.pipeline.registry)
        live = registry.live()
        version = register_pipeline(registry, folder, parent=live["version"] if live else None)
        say(f"[registry] {version['version']} registered as a candidate in {registry.root}")
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        lo, hi = s["heldout_accuracy_diff_ci95"]
        table = Table(title=f"held-out accuracy ({s['heldout_questions']} unseen questions)")
        for col in ("before", "after", "difference", "95% CI"):
            table.add_column(col, justify="right")
        table.add_row(f"{s['heldout_accuracy_before']:.3f}", f"{s['heldout_accuracy_after']:.3f}",
                      f"{s['heldout_accuracy_diff']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]")
        out.print(table)
        out.print(f"report: {s['report']}\nfinal model: {s['final_model']}\nsummary: {summary_path}", soft_wrap=True)
        if s.get("releasable") is False:
            from rlhf.redteam.report import failures

            console.print(f"[bold red]not releasable:[/] the red-team gate failed: {escape(failures(s['redteam']))}",
                          soft_wrap=True)
            raise typer.Exit(3)


@app.command()
def serve(
    model: str = typer.Option("", help="Model folder to serve, or `tiny` / `smollm2`."),
    registry: str = typer.Option("", help="Serve the registry's live version and follow promotions "
                                 "and rollbacks without a restart (instead of --model)."),
    config: Path | None = typer.Option(None, help="YAML config (serve section)."),
    overrides: list[str] | None = OVERRIDES_ARG,
    host: str | None = typer.Option(None, help="Bind address (default serve.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="HTTP port (default serve.port, 8000)."),
    classifiers: bool = typer.Option(True, "--classifiers/--no-classifiers",
                                     help="Guard classifiers on (serve.input_guard/output_guard); rules stay on."),
) -> None:
    """Serve the QA assistant on Ray Serve (OpenAI-compatible routes, /ask, feedback) until Ctrl-C."""
    from rlhf.models.paths import ModelError

    if bool(model) == bool(registry):
        fail("give exactly one of --model (a fixed model) or --registry (its live version, followed)")
    off = [] if classifiers else ["serve.input_guard=", "serve.output_guard="]
    try:
        cfg = load_config(config, [*(overrides or []), *off])
    except ConfigError as exc:
        fail(str(exc))
    from serve.run import serve_forever

    def ready(url: str) -> None:
        console.print(f"serving [bold]{cfg.serve.model_name}[/] at {url} (Ctrl-C stops)", highlight=False)
        out.print(url, soft_wrap=True)

    try:
        serve_forever(model, cfg, host or cfg.serve.host, port or cfg.serve.port, on_ready=ready, registry=registry,
                      log=say)
    except (ConfigError, ModelError, ValueError) as exc:
        fail(str(exc))


app.add_typer(guard_app, name="guard")  # rlhf/cli/safety.py
app.command()(redteam)
app.add_typer(review_app, name="review")  # the review queue and agreement (rlhf/cli/review.py)
app.command("round")(round_command)  # one human-in-the-loop training round


@app.command()
def tune(
    config: Path = CONFIG_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    space: Path = typer.Option(..., help="Search space YAML: dotted config keys -> Tune domains "
                               "(loguniform, choice, grid_search, ...) or fixed values."),
    trials: int | None = typer.Option(None, help="Samples drawn from the space (tune.num_samples); "
                                         "each sample covers every grid_search value."),
    scheduler: str | None = typer.Option(None, help="asha, pbt or fifo (tune.scheduler)."),
    metric: str | None = typer.Option(None, help="Metric to optimise, e.g. reward/mean (tune.metric)."),
    mode: str | None = typer.Option(None, help="max or min (tune.mode)."),
    run_dir: Path | None = typer.Option(None, help="Sweep directory (default runs/<train.name>-sweep/)."),
    resume: bool = typer.Option(False, help="Continue an interrupted sweep in --run-dir; ended trials are kept."),
) -> None:
    """Hyperparameter sweeps with Ray Tune: short RL trials, ASHA/PBT/FIFO, best config and plot."""
    options = {"num_samples": trials, "scheduler": scheduler, "metric": metric, "mode": mode}
    cfg = load(config, [*(overrides or []), *(f"tune.{k}={v}" for k, v in options.items() if v is not None)])
    from tune.sweep import SweepInterrupted, TrialsFailed, run_sweep

    try:
        result = run_sweep(cfg, space, run_dir=run_dir, resume=resume, console=console)
    except ConfigError as exc:
        fail(str(exc))
    except SweepInterrupted as exc:
        fail(str(exc), code=130)
    except KeyboardInterrupt:  # before Tune took over Ctrl-C: no trial has started
        fail("interrupted before the sweep started", code=130)
    except TrialsFailed as exc:
        fail(str(exc), code=1)
    out.print(str(result.best_config or result.run_dir), soft_wrap=True)


# ----------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    config: Path | None = typer.Argument(None, help="YAML config (defaults when omitted)."),
    overrides: list[str] | None = OVERRIDES_ARG,
    docs: bool = typer.Option(False, "--docs", help="Also print every field's documentation."),
) -> None:
    """Print the resolved config, optionally with each field's documentation."""
    from rlhf.config.typed_yaml import to_yaml

    overrides = list(overrides or [])
    if config is not None and not config.exists() and "=" in str(config):
        # `rlhf config show algo.kl_coef=0.1`: no file, only overrides.
        config, overrides = None, [str(config), *overrides]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))
    # Plain text: rich markup or wrapping would change the YAML.
    typer.echo(to_yaml(cfg), nl=False)
    if docs:
        for key, doc in field_docs().items():
            typer.echo(f"{key}: {doc}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
