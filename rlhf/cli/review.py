"""`rlhf review queue|agreement` and `rlhf round`: the human-in-the-loop commands.

Wired into the main CLI (rlhf/cli/main.py) with one add_typer and one command line; kept apart so
cli.py stays small. The reviewers' side is the review page of the QA endpoint (`rlhf serve`,
then /review)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rlhf.cli.common import CONFIG_ARG, console, fail, out, say
from rlhf.cli.common import load as _load
from rlhf.config.typed_yaml import ConfigError

OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. review.batch_size=10.")

review_app = typer.Typer(help="Human review: fill the review queue, check reviewer agreement.",
                         no_args_is_help=True)
DB_OPT = typer.Option(None, "--db", help="Feedback SQLite file (default serve.feedback_db).")


def _table(title: str, header: list[str], rows: list[list]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    return table


@review_app.command("queue")
def queue(
    config: Path = CONFIG_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    model: str | None = typer.Option(None, help="Model whose answers are reviewed (default: the last promoted "
                                        "round's in review.run_dir, else model.path)."),
    db: Path | None = DB_OPT,
) -> None:
    """Add a batch to the review queue: pairs the reward model is least sure of, samples that
    disagree most, guard-flagged and thumbs-down answers, and a random calibration slice."""
    cfg = _load(config, overrides)
    from rlhf.data.readers import DataError
    from rlhf.human.review_queue import build_queue
    from rlhf.human.rounds import current_model
    from rlhf.models.paths import ModelError

    try:
        with console.status("sampling two answers per question and scoring them"):
            summary = build_queue(cfg, model or current_model(cfg), db)
    except (DataError, ModelError) as exc:
        fail(str(exc))
    rows = [[reason, n] for reason, n in sorted(summary["reasons"].items())] + [["total", summary["items"]]]
    out.print(_table("new review items", ["reason", "items"], rows))
    say(f"batch {summary['batch'] or '(nothing new to add)'}: {summary['candidates']} questions sampled from "
        f"{summary['model']}, {summary['production']} endpoint answers considered; reward model: "
        f"{summary['reward_model'] or 'none'}")
    out.print(summary["db"], soft_wrap=True, markup=False, highlight=False)


@review_app.command("agreement")
def agreement(
    config: Path | None = typer.Argument(None, help="YAML config (serve.feedback_db); optional with --db."),
    overrides: list[str] | None = OVERRIDES_ARG,
    db: Path | None = DB_OPT,
) -> None:
    """How far reviewers agree on items several of them reviewed (pairwise and Krippendorff's alpha)."""
    from rlhf.human.feedback import FeedbackStore
    from rlhf.human.review_store import ReviewStore

    path = db or Path(_load(config, overrides).serve.feedback_db)
    if not path.is_file():
        fail(f"feedback database {path} does not exist")
    store = FeedbackStore(path)
    try:
        rep = ReviewStore(store).agreement()
    finally:
        store.close()

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    rate = rep["rate"]
    rows = [[f"rating: {name}", a["items"], a["pairs"], fmt(a["exact"]), fmt(a["within_1"]), fmt(a["mean_abs_diff"]),
             fmt(a["alpha"])] for name, a in [*rate["aspects"].items(), ("overall", rate["overall"])]]
    c = rep["compare"]
    rows.append(["better of two", c["items"], c["pairs"], fmt(c["exact"]), "", "", fmt(c["alpha"])])
    out.print(_table(f"{rep['reviews']} reviews by {len(rep['reviewers'])} reviewer(s)",
                     ["what", "items", "pairs", "exact", "within 1", "mean abs diff", "alpha"], rows))


def round_command(config: Path = CONFIG_ARG, overrides: list[str] | None = OVERRIDES_ARG,
                  when: str = typer.Option("", help="Run only when due, e.g. 'feedback>=50,thumbs_down>=10,drift' "
                                           "(counted since the last round; any one condition suffices).")) -> None:
    """One human-in-the-loop round: export reviews and feedback, retrain from the last promoted
    model (DPO, or RM + RL), evaluate on the fixed validation set, report, promote if not worse."""
    cfg = _load(config, overrides)
    if when and not _due(cfg, when):
        return
    from rlhf.cluster.resources import local_cpus
    from rlhf.cluster.session import shared_session
    from rlhf.data.readers import DataError
    from rlhf.human.rounds import RoundError, run_round
    from rlhf.models.paths import ModelError

    def run_training(*args, **kwargs):  # imported only when review.method is rm+rl
        from actors.launch import run_training as run

        return run(*args, console=console, **kwargs)

    try:
        with shared_session(local_cpus(cfg)):  # one local Ray for the round's training stages
            report = run_round(cfg, run_training=run_training, log=say)
    except (RoundError, ConfigError, DataError, ModelError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    metric = report["metric"]
    vs = report["vs_promoted"]["diff"].get(metric)
    rows = [[report["round"], "promoted" if report["promoted"] else "not promoted", f"{report['value']:.4f}"
             if report["value"] is not None else "-",
             f"{vs['mean']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else "-"]]
    out.print(_table(f"round {report['round']} vs round {report['base_round']} on the validation set",
                     ["round", "decision", metric, "difference [95% CI]"], rows))
    folder = Path(cfg.review.run_dir) / f"round-{report['round']:03d}"
    out.print(f"report: {folder / 'report.md'}", soft_wrap=True, markup=False, highlight=False)
    if cfg.review.registry:
        from rlhf.lifecycle.lineage import register_round
        from rlhf.lifecycle.registry import Registry

        version = register_round(Registry(cfg.review.registry), report)
        say(f"[registry] round {report['round']} is {version['version']} ({version['status']})")


def _due(cfg, when: str) -> bool:
    """Whether `--when` holds; says why either way."""
    from rlhf.human.feedback import FeedbackStore
    from rlhf.lifecycle.triggers import due

    try:
        store = FeedbackStore(cfg.serve.feedback_db)
        try:
            ok, why, _ = due(when, store, cfg.review.run_dir, cfg.monitor.history)
        finally:
            store.close()
    except ConfigError as exc:
        fail(str(exc))
    say(f"[round] {'due' if ok else 'not due'}: {why}")
    return ok
