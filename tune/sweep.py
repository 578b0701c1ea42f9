"""`rlhf tune`: a Ray Tune sweep whose trials are short runs of the config's stage (tune.stage:
RL by default, or SFT, RM or DPO training; tune/trial_plan.py).

Everything that can be wrong with the request (space keys, ranges, the metric, the room for
concurrent trials, the run directory) fails before any trial starts. The sweep's run directory:

    <run-dir>/
      sweep.yaml  space.yaml     what was asked; a --resume must ask the same
      tune/                      Ray Tune's experiment state (what Tuner.restore reads)
      trials/<trial id>/         each trial's run directory (config, metrics, checkpoints, model)
      summary.json  best_config.yaml  trials.png
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from rlhf.config.tree import Config, dump_config, load_config
from rlhf.config.typed_yaml import ConfigError, to_dict
from tune import checks, report, trial_plan
from tune.space import FIXED, Space, load_space, searched, to_tune_space, trial_config, trial_count, variants
from tune.trial import run_trial

EXPERIMENT = "tune"  # Tune's experiment folder inside the sweep's run directory
ENV_PREFIXES = ("RLHF_", "HF_", "VLLM_", "DS_")  # what trials on other nodes must see, as in `rlhf train`


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial ended; `--resume` continues it."""


class TrialsFailed(RuntimeError):
    """Some trials raised; the message names them. `--resume` retries them."""


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[report.TrialRow]
    best: report.TrialRow | None
    best_config: Path | None


def run_sweep(cfg: Config, space_path: str | Path, run_dir: str | Path | None = None, resume: bool = False,
              console: Console | None = None) -> SweepResult:
    """Check the request, run (or resume) the Tuner, and write the table, best config and plot."""
    import ray

    console = console or Console(stderr=True)
    # Tune snapshots its state after every reported checkpoint (one per step here), which keeps
    # --resume exact; its warning about snapshot frequency targets large experiments.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    space = load_space(space_path, cfg)
    configs = variants(space, cfg)
    for c in configs:
        trial_plan.check_stage(c)
    checks.check_metric(cfg.tune.metric, configs)
    max_steps = max(trial_plan.reports(c) for c in configs)
    make_scheduler(cfg, space, max_steps)  # its errors too come before Ray starts
    if cfg.tune.scheduler == "pbt":
        checks.check_same_layout(configs)
    needs = checks.trial_needs(configs)
    run_dir = Path(run_dir or Path("runs") / f"{cfg.train.name}-sweep").resolve()
    check_run_dir(run_dir, cfg, space, Path(space_path), resume)
    started = start_ray(cfg, needs)
    try:
        where = "the local Ray" if started == "local" else "the Ray cluster"
        checks.check_nodes(configs, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        concurrency = checks.check_concurrency(cfg, needs, ray.cluster_resources(), where)
        if not resume:
            record_request(run_dir, cfg, Path(space_path))
        console.print(f"sweep in {run_dir}: up to {concurrency} trial(s) at once, each {needs}")
        results = fit(cfg, space, run_dir, concurrency, max_steps, resume)
        # Tune's saved state, not the returned grid: after Ctrl-C Tune stops the running trials
        # (they look terminated in memory) but saves them as running, and it has not yet
        # created the trials it had still to sample.
        ended = ended_trials(run_dir / EXPERIMENT)
        total = trial_count(space, cfg.tune.num_samples)
        finished = None if len(ended) >= total else ended
    finally:
        if started:
            ray.shutdown()
    return summarise(cfg, space, run_dir, results, finished, total, console)


def check_run_dir(run_dir: Path, cfg: Config, space: Space, space_path: Path, resume: bool) -> None:
    """A new sweep needs a fresh directory; a resumed one the same config and space."""
    asked = run_dir / "sweep.yaml"
    if resume and not asked.exists():
        raise ConfigError(f"--resume: no sweep in {run_dir}")
    if not resume and asked.exists():
        raise ConfigError(f"{run_dir} already holds a sweep; pass --resume to continue it or choose another --run-dir")
    if resume:
        # Tune restores the trials it sampled; the config and space must be the ones they came from.
        before = to_dict(load_config(asked))
        changed = _changed_keys(before, to_dict(cfg))
        if changed:
            raise ConfigError(f"--resume: the config differs from the sweep's ({', '.join(changed)}); "
                              f"resume with {asked}")
        if load_space(run_dir / "space.yaml", cfg) != space:
            raise ConfigError(f"--resume: {space_path} differs from the sweep's space ({run_dir / 'space.yaml'})")


def record_request(run_dir: Path, cfg: Config, space_path: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "sweep.yaml")
    (run_dir / "space.yaml").write_text(space_path.read_text())


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def start_ray(cfg: Config, needs: dict[str, float]) -> str:
    """Join the configured cluster, or start a local Ray sized to the trials that fit here.
    -> "local", "cluster", or "" when Ray was already up (then it is not ours to stop)."""
    import ray

    if ray.is_initialized():
        return ""
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}}
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
        return "cluster"
    cores = os.cpu_count() or 1
    pool = {"CPU": checks.local_cpus(cfg, needs, cores)}
    where = f"this machine ({cores} cores, one trial per core unless resources.num_cpus says otherwise)"
    room = checks.check_concurrency(cfg, needs, pool, where)
    # Logical CPUs for exactly the trials wanted: Tune then never packs in more.
    num_cpus = cfg.resources.num_cpus or math.ceil(needs.get("CPU", 1.0) * room)
    # Ray Train (finetune trials) frees its workers' placement group through a cleaner that asks
    # the dashboard's state API whether the run's controller is gone; without the dashboard the
    # group of an ended trial stays reserved and the next trial's workers wait for it forever.
    # "local": never attach to another Ray on this machine (a `ray start` cluster would refuse
    # num_cpus); joining one is explicit (resources.address, RAY_ADDRESS).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=cfg.tune.stage != "rl", runtime_env=env,
             log_to_driver=False)
    return "local"


def make_scheduler(cfg: Config, space: Space, max_steps: int):
    """ASHA stops trials that trail at a rung; PBT copies the leaders' weights into the laggards
    and perturbs their values; FIFO runs every trial to the end."""
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    from tune.schedulers import ResumableASHA

    t = cfg.tune
    if t.grace_period < 1 or t.grace_period > max_steps:
        length = "train.steps" if t.stage == "rl" else f"{t.stage}.max_steps + 1 (validations per trial)"
        raise ConfigError(f"tune.grace_period={t.grace_period} must be between 1 and {length}={max_steps}")
    if t.scheduler == "asha":
        # Halving (not Tune's quartering) suits sweeps of a handful of trials.
        return ResumableASHA(time_attr="training_iteration", max_t=max_steps, grace_period=t.grace_period,
                             reduction_factor=2)
    if t.scheduler == "pbt":
        mutable = {k: p.to_tune() for k, p in space.items() if p.kind not in (FIXED, "grid_search")}
        if not mutable:
            raise ConfigError("tune.scheduler=pbt perturbs sampled values, and the space has only fixed values "
                              "and grid_search; give some key a choice or a range (uniform, loguniform, ...)")
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=t.grace_period,
                                       hyperparam_mutations=mutable)
    return FIFOScheduler()


def trial_resources(base: dict, config: dict):
    """Each trial's placement group: its own bundle, then the bundles of its roles."""
    from ray.tune import PlacementGroupFactory

    return PlacementGroupFactory(checks.trial_bundles(trial_config(base, config)))


def trial_dirname(trial) -> str:
    return trial.trial_id  # short and stable: the trial's run directory has the same name


def fit(cfg: Config, space: Space, run_dir: Path, concurrency: int, max_steps: int, resume: bool):
    from ray import tune

    base = to_dict(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, trials_dir=str(run_dir / "trials")),
        resources=functools.partial(trial_resources, base),
    )
    path = str(run_dir / EXPERIMENT)
    # One pointer checkpoint per trial is enough to resume, and keeping one makes Tune snapshot
    # its state at every step. PBT clones a leader's checkpoint after the leader may have reported
    # newer ones, so it keeps them all (each is a few bytes).
    keep = None if cfg.tune.scheduler == "pbt" else 1
    if resume and tune.Tuner.can_restore(path):
        # Finished trials stay finished; unfinished ones continue from their last checkpoint.
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True).fit()
    tuner = tune.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=make_scheduler(cfg, space, max_steps),
            num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrency, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=str(run_dir),  # Tune wants an absolute path
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep), verbose=1,
        ),
    )
    return tuner.fit()


def ended_trials(experiment: Path) -> set[str]:
    """Ids of the trials Tune ended (finished, stopped or failed), from its saved state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(experiment))
    return {t.trial_id for t in analysis.trials if t.status in ("TERMINATED", "ERROR")}


def summarise(cfg: Config, space: Space, run_dir: Path, results, finished: set[str] | None, total: int,
              console: Console) -> SweepResult:
    metric, mode = cfg.tune.metric, cfg.tune.mode
    rows = report.collect(results, to_dict(cfg), metric, finished, run_dir / "trials")
    # An interrupted sweep has no winner yet: no best config until every trial has ended.
    best = report.best_row(rows, mode) if finished is None else None
    best_path = report.write_outputs(run_dir, rows, to_dict(cfg), metric, mode, best)
    table = report.table(rows, searched(space), metric, mode, best)
    console.print(table)
    if finished is not None:
        raise SweepInterrupted(f"sweep interrupted with {total - len(finished)} of {total} trials unfinished; "
                               f"continue it with --resume --run-dir {run_dir}")
    failed = [r for r in rows if r.status == report.ERROR]
    if failed:
        logs = ", ".join(str(run_dir / EXPERIMENT / r.trial) for r in failed)
        raise TrialsFailed(f"{len(failed)} of {len(rows)} trials failed (logs: {logs}); --resume retries them")
    return SweepResult(run_dir, rows, best, best_path)
