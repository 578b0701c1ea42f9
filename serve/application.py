"""Building the Serve application: the serve-section checks that must pass before a replica
starts, the deployment options (replicas or autoscaling, health checks) taken from the config,
`app_for` (used by `rlhf serve` and the tests) and `build_app`, the entry point of `serve run` /
`serve deploy` (import path `serve.application:build_app`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from rlhf.config.tree import Config, load_config
from rlhf.config.typed_yaml import ConfigError, to_dict
from rlhf.redteam.guard_train import resolve_guard
from rlhf.safety.guard import is_guard_folder
from rlhf.safety.guard_rules import GUARD_RULES
from serve.app import QAServer
from serve.feedback_service import FeedbackDB


def check_serve_config(cfg: Config) -> None:
    """Serve-section checks that must fail before a replica starts."""
    s = cfg.serve

    def need(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"serve.{where}: {message}")

    need(bool(s.model_name), "model_name", "must not be empty")
    need(s.num_replicas >= 1, "num_replicas", "must be at least 1")
    need(s.autoscale_max == 0 or 0 <= s.autoscale_min <= s.autoscale_max, "autoscale_min",
         f"must be between 0 and autoscale_max ({s.autoscale_max})")
    need(1 <= s.default_max_tokens <= s.max_tokens_limit, "default_max_tokens",
         f"must be between 1 and max_tokens_limit ({s.max_tokens_limit})")
    need(s.max_model_len >= 2, "max_model_len", "must be at least 2")
    need(0.0 < s.guard_threshold < 1.0, "guard_threshold", "must be between 0 and 1")
    need(s.max_prompt_chars >= 1, "max_prompt_chars", "must be at least 1")
    need(s.max_ongoing_requests >= 1, "max_ongoing_requests", "must be at least 1")
    need(s.target_ongoing_requests > 0, "target_ongoing_requests", "must be positive")
    need(bool(s.feedback_db), "feedback_db", "must name a file")
    keys = [k for k in s.reviewer_keys.values() if k]
    need(len(keys) == len(set(keys)), "reviewer_keys", "two reviewers share a key; the key says who reviews")
    for name in ("input_guard", "output_guard"):
        folder = getattr(s, name)
        need(not folder or folder == "default" or is_guard_folder(folder), name,
             f"{folder} is not a guard classifier folder (train one with `rlhf guard train`; `default` is the "
             "shipped pair, \"\" turns it off)")
    unknown = set(s.guard_rules) - set(GUARD_RULES)
    need(not unknown, "guard_rules", f"unknown rule(s) {sorted(unknown)}; valid: {', '.join(GUARD_RULES)}")


def deployment_options(cfg: Config) -> dict:
    s = cfg.serve
    opts = {"max_ongoing_requests": s.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": s.cpus_per_replica},
            "health_check_period_s": s.health_check_period_s,
            "health_check_timeout_s": s.health_check_timeout_s,
            "graceful_shutdown_timeout_s": 10}
    if s.max_replicas_per_node:
        opts["max_replicas_per_node"] = s.max_replicas_per_node
    if s.autoscale_max > 0:
        opts["autoscaling_config"] = {"min_replicas": s.autoscale_min, "max_replicas": s.autoscale_max,
                                      "initial_replicas": max(1, s.autoscale_min),
                                      "target_ongoing_requests": s.target_ongoing_requests}
    else:
        opts["num_replicas"] = s.num_replicas
    return opts


def _guard_folder(spec: str, side: str) -> str:
    """An absolute classifier folder; `default` is trained into the cache if it is not there yet."""
    if not spec:
        return ""
    return str(Path(resolve_guard(spec, side)).expanduser().resolve())


def app_for(model: str, cfg: Config, user_config: dict | None = None):
    """The bound Serve application for a model spec (folder, `tiny`, `smollm2`) and a config.

    Relative paths (feedback DB, guard folders) are made absolute here, where they were meant;
    replicas may run in another working directory. `user_config` ({"model_path", "version"})
    reaches the replicas' `reconfigure`: a new one moves them to other weights in place."""
    from rlhf.models.loading import resolve_model_path

    s = dataclasses.replace(
        cfg.serve,
        feedback_db=str(Path(cfg.serve.feedback_db).expanduser().resolve()),
        input_guard=_guard_folder(cfg.serve.input_guard, "input"),
        output_guard=_guard_folder(cfg.serve.output_guard, "output"))
    cfg = dataclasses.replace(cfg, serve=s)
    check_serve_config(cfg)
    model_path = resolve_model_path(model)
    opts = deployment_options(cfg)
    if user_config is not None:
        opts["user_config"] = user_config
    config = to_dict(cfg)
    # `serve.run` gives a deployment a fresh random code version on every call, which replaces
    # every replica (a cold start, then `reconfigure` on top). The version is what Serve's config
    # deploys derive too: the same code and init arguments, so a call that changes only
    # user_config (a promotion, a rollback) reaches the running replicas' `reconfigure` in place.
    version = hashlib.sha256(json.dumps([model_path, config], sort_keys=True, default=str).encode()).hexdigest()[:16]
    deployment = QAServer.options(**opts).options(version=version, _internal=True)
    if feedback_store(cfg) == "actor":
        return deployment.bind(model_path, config, FeedbackDB.bind(s.feedback_db))
    return deployment.bind(model_path, config)


def feedback_store(cfg: Config) -> str:
    """`file` or `actor` for serve.feedback_store; `auto` asks the connected Ray cluster."""
    if cfg.serve.feedback_store != "auto":
        return cfg.serve.feedback_store
    import ray

    from rlhf.cluster.session import multi_node

    return "actor" if ray.is_initialized() and multi_node() else "file"


def build_app(args: dict):
    """Entry point of `serve run` / `serve deploy` (import path serve.application:build_app).

    args: model (folder, `tiny` or `smollm2`; required), config (YAML file, optional),
    overrides (list of dotted overrides such as serve.num_replicas=2, optional)."""
    args = dict(args or {})
    unknown = set(args) - {"model", "config", "overrides"}
    if unknown:
        raise ConfigError(f"unknown application args {sorted(unknown)} (valid: model, config, overrides)")
    if not isinstance(args.get("model"), str) or not args["model"]:
        raise ConfigError("application args: 'model' (a model folder, tiny or smollm2) is required")
    overrides = args.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError("application args: 'overrides' must be a list like ['serve.num_replicas=2']")
    cfg = load_config(args.get("config") or None, [str(o) for o in overrides])
    return app_for(args["model"], cfg)
