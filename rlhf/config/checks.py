"""Checks of the config tree that must fail before any actor starts, each naming the field and
what was expected: choice fields against their registries, then cross-field rules.

A choice field's valid values come from one place. Where a registry defines them (advantage
estimators, losses, KL estimators, reward rules, metrics, guard rules, pipeline stages, data
kinds), `CHOICES` names that registry as "module:attribute" and it is looked up when a config
loads (by name, so the config package imports nothing above it); registering a new variant makes
it valid everywhere at once. The other choices are listed here and nowhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from rlhf.config.typed_yaml import ConfigError, get_dotted

CHOICES: dict[str, str | tuple[str, ...]] = {
    "algo.name": "rlhf.rl.advantages:ADVANTAGES",
    "algo.policy_loss": "rlhf.rl.losses:POLICY_LOSSES",
    "algo.loss_agg": "rlhf.rl.aggregation:AGGREGATIONS",
    "algo.kl_estimator": "rlhf.rl.kl:KL_ESTIMATORS",
    "reward.rules": "rlhf.rl.rewards:RULES",
    "data.kind": "rlhf.data.kinds:SCHEMAS",
    "review.promote_metric": "rlhf.evaluation.metrics:METRICS",
    "serve.guard_rules": "rlhf.safety.guard_rules:GUARD_RULES",
    "pipeline.stages": "rlhf.pipeline.stages:PIPELINE_STAGES",
    "redteam.suites": "rlhf.redteam.attacks:SUITES",
    "model.dtype": ("float32", "bfloat16"),  # `auto` is settled before the checks run
    "model.inference_dtype": ("", "float32", "bfloat16"),  # so is `auto`; empty: model.dtype
    "model.attention": ("auto", "eager", "sdpa", "flash_attention_2"),
    "rollout.weight_sync": ("auto", "shm", "object_store", "nccl", "ipc"),
    "learner.backend": ("auto", "gloo", "nccl"),
    "serve.feedback_store": ("auto", "file", "actor"),
    "serve.proxy_location": ("EveryNode", "HeadOnly"),
    "tune.stage": ("rl", "sft", "rm", "dpo"),
    "tune.mode": ("max", "min"),
    "tune.scheduler": ("asha", "pbt", "fifo"),
    "review.method": ("dpo", "rm+rl"),
    "pipeline.rl_prompts": ("data", "headroom"),
}
"""Dotted choice field -> its valid values, or the registry ("module:attribute") that holds them."""

HINTS: dict[tuple[str, str], str] = {}
"""(choice field, value) -> why that value is refused although it is a known name."""


def registry(dotted: str):
    """The registry behind a choice field (a Mapping of name -> entry)."""
    module, attr = str(CHOICES[dotted]).split(":")
    return getattr(importlib.import_module(module), attr)


def valid_values(dotted: str) -> tuple[str, ...]:
    """The valid values of a choice field, read from its registry where it has one."""
    source = CHOICES[dotted]
    return source if isinstance(source, tuple) else tuple(registry(dotted))


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def _given(value) -> Iterable[str]:
    """The names a choice field holds: one string, a list of them, or the keys of a mapping."""
    if isinstance(value, str):
        return [value]
    return list(value)


def check_choices(cfg) -> None:
    for dotted in CHOICES:
        valid = valid_values(dotted)
        for name in _given(get_dotted(cfg, dotted)):
            hint = HINTS.get((dotted, name))
            _check(hint is None, dotted, f"'{name}': {hint}")
            _check(name in valid, dotted, f"unknown value '{name}'; valid: {', '.join(valid)}")


def validate(cfg) -> None:
    """Every check that must fail before any actor starts."""
    check_choices(cfg)
    _validate_rl(cfg)
    _validate_sizes(cfg)
    _validate_review(cfg.review)
    _validate_pipeline(cfg.pipeline)
    _validate_monitor(cfg.monitor)
    _check(not cfg.eval.review_db or bool(cfg.eval.review_model), "eval.review_model",
           "is empty while eval.review_db is set: name the evaluated model as the feedback database does "
           "(answers.model, e.g. rlhf-qa@v2)")


def _validate_rl(cfg) -> None:
    _check(bool(cfg.model.path.strip()), "model.path", "is empty: set a folder, `smollm2`, `tiny` or a hub id")
    _check(cfg.rollout.n_samples >= 1, "rollout.n_samples", "must be at least 1")
    need = registry("algo.name")[cfg.algo.name].min_group_size
    _check(cfg.rollout.n_samples >= need, "rollout.n_samples",
           f"{cfg.algo.name} compares samples within a group and needs at least {need} per prompt")
    _check(not (cfg.learner.backend == "nccl" and not cfg.resources.use_gpu), "learner.backend",
           "nccl needs GPUs (resources.use_gpu: true); on CPU use auto or gloo")
    _check(cfg.rollout.weight_sync not in ("nccl", "ipc") or cfg.resources.use_gpu, "rollout.weight_sync",
           f"{cfg.rollout.weight_sync} moves weights GPU to GPU through vLLM's weight-transfer engine and needs "
           "resources.use_gpu: true (without CUDA vLLM's NCCL path is a no-op that leaves the engines on stale "
           "weights); on CPU use auto, shm (one node) or object_store (across nodes)")
    _check(cfg.rollout.weight_sync != "ipc", "rollout.weight_sync",
           "ipc needs the rollout engines on the learner's own GPUs, and the placement layout gives engines GPUs "
           "of their own; use nccl")
    _check(not (cfg.model.lora.enabled and cfg.rollout.weight_sync in ("nccl", "ipc")), "rollout.weight_sync",
           f"{cfg.rollout.weight_sync} streams full weights; with model.lora.enabled only the adapter (a few MB) "
           "travels, as a file: use auto, shm or object_store")
    _validate_lora(cfg.model.lora)
    for name, weight in cfg.reward.rules.items():
        _check(isinstance(weight, (int, float)) and weight == weight and abs(weight) != float("inf"),
               f"reward.rules.{name}", f"weight must be a finite number, got {weight!r}")


def _validate_pipeline(p) -> None:
    _check(p.rl_prompts != "headroom" or "pairs" in p.stages, "pipeline.rl_prompts",
           "`headroom` weighs the prompts by the pairs stage's sampled answers; add `pairs` to pipeline.stages")


def _validate_lora(lora) -> None:
    if not lora.enabled:
        return
    _check(1 <= lora.r <= 512, "model.lora.r", f"must be 1-512 (vLLM's largest adapter rank), got {lora.r}")
    _check(bool(lora.target_modules), "model.lora.target_modules", "is empty: name the linear modules to adapt")
    # The engine scores given tokens (reference, probe) through prompt logprobs, which vLLM 0.32's
    # CPU LoRA logits path cannot do with an adapted LM head (rlhf/models/offline.py).
    _check("lm_head" not in lora.target_modules, "model.lora.target_modules",
           "lm_head cannot carry an adapter in RL: the rollout engine could not score given tokens with it; "
           "adapt the attention and MLP projections")


def _validate_sizes(cfg) -> None:
    _check(cfg.learner.num_ranks >= 1, "learner.num_ranks", "must be at least 1")
    _check(cfg.learner.micro_batch_size >= 1, "learner.micro_batch_size", "must be at least 1")
    for stage in ("sft", "rm", "dpo"):
        _check(getattr(cfg, stage).cpus_per_worker >= 1, f"{stage}.cpus_per_worker", "must be at least 1")
    _check(cfg.learner.mini_batches >= 1, "learner.mini_batches", "must be at least 1")
    _check(cfg.learner.deepspeed.zero_stage in (0, 1, 2, 3), "learner.deepspeed.zero_stage", "expected 0-3")
    _check(0.0 < cfg.algo.clip_eps < 1.0, "algo.clip_eps", f"must be in (0, 1), got {cfg.algo.clip_eps}")
    _check(cfg.algo.clip_eps_high >= 0.0, "algo.clip_eps_high", "must be 0 (same as clip_eps) or more")
    _check(cfg.algo.tis_cap == 0.0 or cfg.algo.tis_cap >= 1.0, "algo.tis_cap",
           f"must be 0 (off) or at least 1, got {cfg.algo.tis_cap}")
    _check(cfg.algo.max_draws >= 1, "algo.max_draws", f"must be at least 1, got {cfg.algo.max_draws}")
    _check(not cfg.algo.dynamic_sampling or cfg.rollout.n_samples >= 2, "algo.dynamic_sampling",
           f"compares the rewards within a prompt's group, so rollout.n_samples must be 2 or more, "
           f"got {cfg.rollout.n_samples}")
    batch = cfg.train.prompts_per_step * cfg.rollout.n_samples
    per_update = cfg.learner.num_ranks * cfg.learner.mini_batches
    _check(
        batch % per_update == 0,
        "train.prompts_per_step",
        f"the batch of {cfg.train.prompts_per_step} prompts x {cfg.rollout.n_samples} samples = {batch} "
        f"sequences does not divide across learner.num_ranks={cfg.learner.num_ranks} x "
        f"learner.mini_batches={cfg.learner.mini_batches}",
    )
    _check(cfg.train.steps >= 1, "train.steps", "must be at least 1")
    _check(cfg.train.save_every >= 0, "train.save_every", "must be 0 or more")
    for stage in ("sft", "rm", "dpo"):
        _check(getattr(cfg, stage).save_every >= 0, f"{stage}.save_every", "must be 0 or more")
    _check(0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _check(cfg.serve.max_tokens_limit >= 1, "serve.max_tokens_limit", "must be at least 1")
    _check(cfg.serve.rate_limit_per_minute >= 0, "serve.rate_limit_per_minute", "must be 0 (off) or more")
    _check(cfg.serve.rate_limit_burst >= 1, "serve.rate_limit_burst", "must be at least 1")
    _check(cfg.serve.max_messages >= 1, "serve.max_messages", "must be at least 1")
    _check(cfg.serve.max_replicas_per_node >= 0, "serve.max_replicas_per_node", "must be 0 (no limit) or more")
    _validate_role_resources(cfg.resources.role_resources)


def _validate_role_resources(by_role: dict[str, dict[str, float]]) -> None:
    roles = ("rollout", "learner", "reward", "reference")
    for role, asks in by_role.items():
        where = f"resources.role_resources.{role}"
        _check(role in roles, where, f"unknown role; expected one of {', '.join(roles)}")
        for name, amount in asks.items():
            _check(name not in ("CPU", "GPU", "memory", "object_store_memory"), f"{where}.{name}",
                   "set CPUs and GPUs with resources.cpus_per_actor and resources.gpus_per_*; "
                   "role_resources holds custom resources only")
            _check(amount > 0, f"{where}.{name}", f"must be more than 0, got {amount:g}")


def _validate_review(r) -> None:
    _check(registry("review.promote_metric")[r.promote_metric].better is not None, "review.promote_metric",
           f"{r.promote_metric} has no better direction; choose a metric where higher or lower is better")
    _check(r.batch_size >= 1, "review.batch_size", "must be at least 1")
    _check(r.candidates >= 0, "review.candidates", "must be 0 or more")
    _check(r.reviewers_per_item >= 1, "review.reviewers_per_item", "must be at least 1")
    for name in ("random_fraction", "production_fraction"):
        _check(0.0 <= getattr(r, name) <= 1.0, f"review.{name}", "must be in [0, 1]")
    _check(r.random_fraction + r.production_fraction <= 1.0, "review.random_fraction",
           "random_fraction + production_fraction must not exceed 1")


def _validate_monitor(m) -> None:
    _check(m.min_answers >= 1, "monitor.min_answers", "must be at least 1")
    for name in ("max_thumbs_down_rate", "max_guard_block_rate", "max_error_rate"):
        _check(0.0 <= getattr(m, name) <= 1.0, f"monitor.{name}", "must be in [0, 1]")
    _check(m.answer_length_ratio >= 1.0, "monitor.answer_length_ratio", "must be at least 1")
    _check(m.max_p95_latency_s > 0, "monitor.max_p95_latency_s", "must be positive")
