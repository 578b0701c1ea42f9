"""Cross-field checks of the config tree (rlhf/config.py): what must fail before any actor
starts, each naming the field and what was expected."""

from __future__ import annotations

from rlhf.typed_yaml import ConfigError

ALGOS = ("ppo", "grpo", "rloo", "reinforce_pp")
GROUP_ALGOS = ("grpo", "rloo")


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def validate(cfg) -> None:
    """Cross-field checks that must fail before any actor starts."""
    _check(cfg.algo.name in ALGOS, "algo.name", f"expected one of {ALGOS}, got '{cfg.algo.name}'")
    _check(cfg.algo.kl_estimator in ("k1", "k2", "k3"), "algo.kl_estimator", "expected k1, k2 or k3")
    _check(bool(cfg.model.path.strip()), "model.path", "is empty: set a folder, `smollm2`, `tiny` or a hub id")
    _check(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype", "expected float32, bfloat16 or auto")
    _check(cfg.model.attention in ("auto", "eager", "sdpa", "flash_attention_2"), "model.attention",
           "expected auto, eager, sdpa or flash_attention_2")
    _check(
        cfg.rollout.weight_sync in ("auto", "shm", "object_store", "nccl"),
        "rollout.weight_sync",
        "expected auto, shm, object_store or nccl",
    )
    _check(cfg.rollout.n_samples >= 1, "rollout.n_samples", "must be at least 1")
    if cfg.algo.name in GROUP_ALGOS:
        _check(
            cfg.rollout.n_samples >= 2,
            "rollout.n_samples",
            f"{cfg.algo.name} compares samples within a group and needs at least 2 per prompt",
        )
    _check(cfg.learner.num_ranks >= 1, "learner.num_ranks", "must be at least 1")
    _check(cfg.learner.micro_batch_size >= 1, "learner.micro_batch_size", "must be at least 1")
    _check(cfg.learner.mini_batches >= 1, "learner.mini_batches", "must be at least 1")
    _check(cfg.learner.deepspeed.zero_stage in (0, 1, 2, 3), "learner.deepspeed.zero_stage", "expected 0-3")
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
    _check(0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _check(cfg.data.kind in DATA_KINDS, "data.kind", f"expected one of {DATA_KINDS}")
    _check(cfg.tune.mode in ("max", "min"), "tune.mode", "expected max or min")
    _check(cfg.tune.stage in ("rl", "sft", "rm", "dpo"), "tune.stage", "expected rl, sft, rm or dpo")
    _check(cfg.tune.scheduler in ("asha", "pbt", "fifo"), "tune.scheduler", "expected asha, pbt or fifo")
    _check(cfg.serve.max_tokens_limit >= 1, "serve.max_tokens_limit", "must be at least 1")
    _validate_review(cfg.review)


def _validate_review(r) -> None:
    _check(r.method in REVIEW_METHODS, "review.method", f"expected one of {REVIEW_METHODS}, got '{r.method}'")
    _check(r.batch_size >= 1, "review.batch_size", "must be at least 1")
    _check(r.candidates >= 0, "review.candidates", "must be 0 or more")
    _check(r.reviewers_per_item >= 1, "review.reviewers_per_item", "must be at least 1")
    for name in ("random_fraction", "production_fraction"):
        _check(0.0 <= getattr(r, name) <= 1.0, f"review.{name}", "must be in [0, 1]")
    _check(r.random_fraction + r.production_fraction <= 1.0, "review.random_fraction",
           "random_fraction + production_fraction must not exceed 1")
    _check(r.promote_metric in PROMOTE_METRICS, "review.promote_metric", f"expected one of {PROMOTE_METRICS}")


DATA_KINDS = ("qa", "prompts", "preferences", "ratings", "rankings")
REVIEW_METHODS = ("dpo", "rm+rl")
PROMOTE_METRICS = ("accuracy", "exact_match", "token_f1", "choice_accuracy", "rm_score", "logprob",
                   "repetition", "refusal")
