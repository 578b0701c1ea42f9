"""`rlhf train`: prepare the run directory, start the roles, run the Trainer, export, report."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.launch import shutdown, start_roles
from rlhf.config import Config, ConfigError, dump_config
from rlhf.loop import Trainer
from rlhf.models import ModelError, load_tokenizer, resolve_model_path
from rlhf.rewards import validate_rules
from rlhf.tracking import MetricsLog

SUMMARY_KEYS = ("reward/mean", "objective/kl", "objective/entropy", "loss/policy", "rollout/logprob_diff",
                "timing/step", "perf/samples_per_second")


def prepare_run_dir(cfg: Config, run_dir: Path | None, resume: bool) -> Path:
    path = Path(run_dir) if run_dir else Path("runs") / cfg.train.name
    state = path / "checkpoints" / "trainer_state.json"
    if resume and not state.exists():
        raise ConfigError(f"--resume: no checkpoint in {path / 'checkpoints'}")
    if not resume and state.exists():
        raise ConfigError(f"{path} already holds a run; pass --resume to continue it or choose another --run-dir")
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, path / "config.yaml")
    return path


def check_before_start(cfg: Config) -> tuple[str, str]:
    """Everything that can fail without actors: model paths and reward rules."""
    try:
        validate_rules(cfg.reward.rules)
    except ValueError as exc:
        raise ConfigError(f"reward.rules: {exc}") from None
    try:
        model = resolve_model_path(cfg.model.path)
        ref = resolve_model_path(cfg.reference.path) if cfg.reference.path else model
        if cfg.reward.model_path:
            resolve_model_path(cfg.reward.model_path)
    except ModelError as exc:
        raise ConfigError(f"model: {exc}") from None
    return model, ref


def run_training(cfg: Config, run_dir: Path | None = None, resume: bool = False,
                 console: Console | None = None, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train per `cfg` in `run_dir`; `on_step(step, metrics)` is called after every step."""
    console = console or Console(stderr=True)
    model_path, ref_path = check_before_start(cfg)
    path = prepare_run_dir(cfg, run_dir, resume)
    tokenizer = load_tokenizer(model_path)
    run_id = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    try:
        with console.status("starting Ray actors: rollout (vLLM), reward, reference, learner (ZeRO-3)"):
            roles = start_roles(cfg, model_path, ref_path, run_id)
        with Progress(TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("train", total=cfg.train.steps, info="")

            def progress(step: int, m: dict) -> None:
                info = f"reward {m['reward/mean']:.3f}  kl {m['objective/kl']:.4f}  {m['timing/step']:.1f}s/step"
                bar.update(task, completed=step, info=info)
                if on_step is not None:
                    on_step(step, m)

            trainer = Trainer(cfg, roles, path, tokenizer, progress)
            start_step = trainer.resume() if resume else 0
            bar.update(task, completed=start_step)
            log = MetricsLog(path, resume_step=start_step)
            rows = trainer.run(log)
            log.close()
        if cfg.train.export:
            with console.status("exporting the policy"):
                roles.learner.export(str(path / "model"))
    finally:
        shutdown(run_id)
    console.print(summary_table(rows, time.perf_counter() - started, path))
    return path


def summary_table(rows: list[dict], seconds: float, path: Path) -> Table:
    table = Table(title=f"run {path} ({seconds:.0f} s)")
    table.add_column("metric")
    table.add_column("first", justify="right")
    table.add_column("last", justify="right")
    for key in SUMMARY_KEYS:
        values = [r[key] for r in rows if key in r]
        if values:
            table.add_row(key, f"{values[0]:.4g}", f"{values[-1]:.4g}")
    return table
