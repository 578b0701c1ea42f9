"""Checks that must fail before any trial starts: the metric and the room for concurrent trials.

Pure functions of the config (no Ray), so they are tested without starting anything.
"""

from __future__ import annotations

import difflib
import math

from rlhf.cluster.resources import check_fits, role_bundles
from rlhf.config.tree import Config
from rlhf.config.typed_yaml import ConfigError
from tune import trial_plan

# What every RL step reports, whatever the config: rlhf/rl/trainer.py `rl_step` (rollout metrics,
# timers, samples/s, weight sync) and the learner's update stats (rlhf/rl/losses.py,
# actors/learner.py update). `step` is added by the trial.
ALWAYS_REPORTED = (
    "step", "reward/mean", "reward/std", "objective/kl", "objective/kl_coef", "objective/entropy",
    "rollout/response_length", "rollout/truncated_fraction", "rollout/behaviour_logprob_diff",
    "perf/samples", "perf/tokens", "perf/samples_per_second", "perf/weight_load_seconds", "perf/lr",
    "perf/sync_bytes", "perf/weight_version",
    "loss/policy", "loss/total", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
    "clip_ratio/dual_mean", "policy/approx_kl", "policy/ratio_mean",
    "timing/generate", "timing/score", "timing/advantages", "timing/update", "timing/sync", "timing/step",
    "timing/learner_forward", "timing/learner_backward", "timing/learner_step", "timing/sync_publish",
    "timing/sync_load",
)


def reported_metrics(cfg: Config) -> set[str]:
    """Every metric a trial of `cfg` reports at each step."""
    if cfg.tune.stage in trial_plan.FINETUNE:
        return set(trial_plan.FINETUNE_METRICS[cfg.tune.stage])
    names = set(ALWAYS_REPORTED)
    names |= {f"reward/{rule}" for rule in cfg.reward.rules}  # one component per rule reward
    if cfg.reward.model_path:
        names.add("reward/model")
    if cfg.rollout.check_logprobs:
        names |= {"rollout/logprob_diff", "timing/probe"}
    uses_reference = cfg.reference.enabled and cfg.algo.kl_coef > 0
    if uses_reference and not cfg.algo.kl_in_reward:
        names.add("loss/kl")  # the KL term sits in the loss only when it is not in the reward
    if cfg.algo.tis_cap > 0:
        names |= {"rollout/tis_weight_mean", "rollout/tis_capped_frac"}
    if cfg.algo.dynamic_sampling:
        names |= {"rollout/groups_dropped_frac", "rollout/draws", "rollout/uninformative_in_batch"}
    if cfg.algo.name == "ppo":
        names |= {"loss/value", "value/clipfrac", "value/mean"}  # only PPO has a critic
    return names


def check_metric(metric: str, configs: list[Config]) -> None:
    """The metric must be reported by every trial, or the scheduler has nothing to compare."""
    reported = [reported_metrics(cfg) for cfg in configs]
    if all(metric in names for names in reported):
        return
    everywhere = sorted(set.intersection(*reported))
    if any(metric in names for names in reported):
        raise ConfigError(f"tune.metric: some trials of this space do not report '{metric}' (e.g. PPO-only or "
                          f"KL-loss metrics); every trial reports: {', '.join(everywhere)}")
    close = difflib.get_close_matches(metric, everywhere, n=1, cutoff=0.0)
    raise ConfigError(f"tune.metric: no trial reports '{metric}'; did you mean '{close[0]}'? "
                      f"Every trial reports: {', '.join(everywhere)}")


def trial_bundles(cfg: Config) -> list[dict[str, float]]:
    """The trial's placement group (tune/trial_plan.py)."""
    return trial_plan.trial_bundles(cfg)


def check_same_layout(configs: list[Config]) -> None:
    """PBT hands a running trial another trial's values, but the trial keeps its placement group:
    every trial the space can produce must need the same bundles."""
    first = trial_bundles(configs[0])
    for cfg in configs[1:]:
        other = trial_bundles(cfg)
        if other != first:
            raise ConfigError(
                f"tune.scheduler=pbt: trials of this space need different resources ({first} and {other}), but a "
                "PBT trial keeps its placement group when it takes another trial's values; search keys that "
                "change resources (learner.num_ranks, rollout.num_engines, ...) with asha or fifo"
            )


def trial_needs(configs: list[Config]) -> dict[str, float]:
    """The most any one trial asks for, per resource."""
    needs: dict[str, float] = {}
    for cfg in configs:
        totals: dict[str, float] = {}
        for bundle in trial_bundles(cfg) + trial_plan.outside_bundles(cfg):
            for resource, amount in bundle.items():
                totals[resource] = totals.get(resource, 0.0) + amount
        for resource, amount in totals.items():
            needs[resource] = max(needs.get(resource, 0.0), amount)
    return needs


def check_nodes(configs: list[Config], nodes: list[dict[str, float]]) -> None:
    """Each role bundle must fit on one node of the cluster (a bundle cannot span nodes)."""
    totals: dict[str, float] = {}
    for node in nodes:
        for resource, amount in node.items():
            totals[resource] = totals.get(resource, 0.0) + amount
    for cfg in configs:
        if cfg.tune.stage == "rl":  # Ray Train checks its own workers' fit
            check_fits(role_bundles(cfg), totals, nodes)


def room_for(needs: dict[str, float], available: dict[str, float]) -> int:
    """How many trials of `needs` fit in `available` at once."""
    fits = [math.floor(available.get(r, 0.0) / amount + 1e-9) for r, amount in needs.items() if amount > 0]
    return min(fits) if fits else 0


def local_cpus(cfg: Config, needs: dict[str, float], cores: int) -> float:
    """Logical CPUs for a Ray this sweep starts itself. An RL trial's roles take turns (generate,
    score, update), so one trial keeps about one core busy: room for one trial per core. A
    finetune trial's workers all compute: room for one trial per num_workers cores. Unless
    resources.num_cpus says otherwise."""
    if cfg.resources.num_cpus:
        return float(cfg.resources.num_cpus)
    if cfg.tune.stage in trial_plan.FINETUNE:  # its workers compute at the same time: a core each
        return needs.get("CPU", 1.0) * max(1, cores // getattr(cfg, cfg.tune.stage).num_workers)
    return needs.get("CPU", 1.0) * max(1, cores)


def check_concurrency(cfg: Config, needs: dict[str, float], available: dict[str, float], where: str) -> int:
    """Concurrent trials the resources allow; an error when not one fits or when
    tune.max_concurrent asks for more. `where` names the resource pool for the message."""
    room = room_for(needs, available)
    per_trial = ", ".join(f"{amount:g} {r}" for r, amount in sorted(needs.items()))
    have = ", ".join(f"{available.get(r, 0.0):g} {r}" for r in sorted(needs))
    if room < 1:
        lower = ("learner.num_ranks / rollout.num_engines" if cfg.tune.stage == "rl"
                 else f"{cfg.tune.stage}.num_workers")
        raise ConfigError(f"resources: one trial needs {per_trial} (the trial's process and its "
                          f"{'roles' if cfg.tune.stage == 'rl' else 'workers'}) but {where} has {have}; "
                          f"lower {lower} or resources.*")
    wanted = cfg.tune.max_concurrent
    if wanted > room:
        raise ConfigError(f"tune.max_concurrent={wanted}: each trial needs {per_trial} and {where} has {have}, "
                          f"room for {room} at once; lower tune.max_concurrent (0 lets the resources decide)")
    return wanted or room
