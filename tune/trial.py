"""One Tune trial: a real (short) run of the base config's stage with the trial's values.

A finetune trial (tune.stage sft, rm or dpo) runs that stage's Ray Train job with validation at
every step; Tune's TuneReportCallback forwards each report. It keeps no checkpoint: a resumed
sweep runs an unfinished finetune trial again from the start (they are short by design).

An RL trial:

The trial reports every step to Tune, with a small checkpoint that points at its run directory.
That keeps Tune's `training_iteration` equal to the RL step across restarts:

- a trial resumed after an interrupted sweep continues from its run's last trainer checkpoint
  and only reports steps Tune has not seen yet (steps since that checkpoint are trained again);
- a PBT exploit hands this trial another trial's pointer: it copies that run's checkpoint into
  its own run directory and continues with its own (mutated) values.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tune.space import trial_config

POINTER = "trial.json"


def run_trial(config: dict, base: dict, trials_dir: str) -> None:
    """Tune's function trainable: `config` holds the trial's dotted values, `base` the sweep's config."""
    from ray import tune
    from rich.console import Console

    from actors.launch import run_training

    cfg = trial_config(base, config)
    run_dir = Path(trials_dir) / tune.get_context().get_trial_id()
    if cfg.tune.stage != "rl":
        run_finetune_trial(cfg, run_dir)
        return
    seen, resume = _prepare_run_dir(tune.get_checkpoint(), run_dir)

    def on_step(step: int, metrics: dict) -> None:
        if step <= seen:
            return  # Tune has this step from before the restart
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, POINTER).write_text(json.dumps({"run_dir": str(run_dir), "step": step}))
            tune.report({**metrics, "step": step}, checkpoint=tune.Checkpoint.from_directory(tmp))

    # The trial's log file is not a terminal: plain progress lines, no live redraws.
    console = Console(stderr=True, force_terminal=False, width=120)
    run_training(cfg, run_dir=run_dir, resume=resume, console=console, on_step=on_step)


def run_finetune_trial(cfg, run_dir: Path) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from rlhf.config.tree import dump_config
    from rlhf.supervised.inputs import finetune_job
    from rlhf.supervised.trainer import run_finetune

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    job = finetune_job(cfg.tune.stage, cfg, run_dir / "model")
    job.eval_every = 1  # one report per step: the scheduler compares trials step by step
    run_finetune(job, cfg, callbacks=[TuneReportCallback()], max_failures=0)


def _prepare_run_dir(checkpoint, run_dir: Path) -> tuple[int, bool]:
    """-> (last step Tune has seen, whether the run resumes from a trainer checkpoint)."""
    if checkpoint is None:
        # A new trial, or one that failed before its first report: nothing worth keeping.
        shutil.rmtree(run_dir, ignore_errors=True)
        return 0, False
    with checkpoint.as_directory() as folder:
        pointer = json.loads(Path(folder, POINTER).read_text())
    source = Path(pointer["run_dir"])
    if source != run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        _copy_trainer_checkpoint(source / "checkpoints", run_dir / "checkpoints")
    if not (run_dir / "checkpoints" / "trainer_state.json").exists():
        # Reported but never saved (train.save_every > steps so far): start over, report later steps.
        shutil.rmtree(run_dir, ignore_errors=True)
        return int(pointer["step"]), False
    return int(pointer["step"]), True


def _copy_trainer_checkpoint(source: Path, dest: Path) -> None:
    """Copy another run's checkpoints while it may still be saving: read its pointer first (it
    moves only after a save completes), so the copied pointer names a complete checkpoint."""
    state = (source / "trainer_state.json").read_text()
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("trainer_state.json*"))
    (dest / "trainer_state.json").write_text(state)
