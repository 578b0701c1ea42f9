"""What a trial runs, per `tune.stage`: its length, what it reports, and the resources it takes.

- rl: a short `rlhf train` run; one report per RL step (train.steps of them). The trial's
  placement group holds the trial process and its roles' bundles (actors/launch.py places the
  roles inside it).
- sft, rm, dpo: that stage's training through Ray Train, as `rlhf sft|rm|dpo` runs it, for
  <stage>.max_steps optimizer steps with validation every step; one report per validation, the
  first before any update (step 0). Ray Train places its workers in a placement group of its own
  (it cannot nest in the trial's), so the trial's group holds only the trial process and the
  workers' CPUs count in the trial's needs, which bound how many trials run at once. The trial
  process only waits on Ray Train's controller, so its bundle is a token CPU share: Tune keeps
  a finished trial's group for the next one and stages groups ahead, and with a whole CPU each
  those groups took the core the next trial's workers were waiting for (seen here: a sweep
  that never got past its second trial).

Pure functions of the config: checked before Ray starts.
"""

from __future__ import annotations

from rlhf.cluster.resources import role_bundles
from rlhf.config.tree import Config
from rlhf.config.typed_yaml import ConfigError

FINETUNE = ("sft", "rm", "dpo")
TRIAL_BUNDLE = {"CPU": 1.0}  # an RL trial's own process: it runs the driver loop, the roles do the work
FINETUNE_TRIAL_BUNDLE = {"CPU": 0.01}  # a finetune trial's process: it waits on Ray Train

# What every finetune validation reports (rlhf/supervised/trainer.py `_train_loop`); `train/*` is absent
# from the step-0 report, so it is not promised here.
FINETUNE_METRICS = {"sft": ("step", "seconds", "val/loss"),
                    "rm": ("step", "seconds", "val/loss", "val/accuracy", "val/margin"),
                    "dpo": ("step", "seconds", "val/loss", "val/accuracy", "val/margin")}


def planned_steps(cfg: Config) -> int:
    """The last step a complete trial reports."""
    if cfg.tune.stage in FINETUNE:
        return getattr(cfg, cfg.tune.stage).max_steps
    return cfg.train.steps


def reports(cfg: Config) -> int:
    """How many times a complete trial reports (the schedulers' time axis)."""
    return planned_steps(cfg) + 1 if cfg.tune.stage in FINETUNE else cfg.train.steps


def check_stage(cfg: Config) -> None:
    stage = cfg.tune.stage
    if stage not in FINETUNE:
        return
    section = getattr(cfg, stage)
    if section.max_steps < 1:
        raise ConfigError(f"tune.stage={stage}: set {stage}.max_steps (the trial's length, which the scheduler "
                          "needs before any trial starts)")
    if not section.data and not (stage != "sft" and cfg.pipeline.human_feedback):
        kind = "QA pairs (qa file or gym:<task>)" if stage == "sft" else "preference pairs, ratings or rankings"
        raise ConfigError(f"tune.stage={stage}: {stage}.data is empty; it names the training file ({kind})")


def trial_bundles(cfg: Config) -> list[dict[str, float]]:
    """The trial's placement group."""
    if cfg.tune.stage in FINETUNE:
        return [dict(FINETUNE_TRIAL_BUNDLE)]
    return [dict(TRIAL_BUNDLE)] + role_bundles(cfg).bundles


def outside_bundles(cfg: Config) -> list[dict[str, float]]:
    """Bundles a trial takes outside its placement group: Ray Train's workers."""
    if cfg.tune.stage not in FINETUNE:
        return []
    section = getattr(cfg, cfg.tune.stage)
    worker = {"CPU": float(section.cpus_per_worker), **({"GPU": 1.0} if cfg.resources.use_gpu else {})}
    return [dict(worker) for _ in range(section.num_workers)]
