"""Settings derived from the config tree where a field is left to `auto` or unset.

Resolved where they are used (not when the config loads), from the config alone, so a saved
config still says `auto` and gives the same answer when it is loaded again.
"""

from __future__ import annotations

import os

from rlhf.config.tree import Config
from rlhf.config.typed_yaml import ConfigError
from rlhf.models.loading import resolve_run_models


def learner_bf16(cfg: Config) -> bool:
    """learner.deepspeed.bf16, where unset following model.dtype."""
    ds = cfg.learner.deepspeed
    return cfg.model.dtype == "bfloat16" if ds.bf16 is None else ds.bf16


def attention_impl(cfg: Config) -> str:
    """model.attention with auto settled (see the field's docstring)."""
    if cfg.model.attention != "auto":
        return cfg.model.attention
    short = cfg.model.max_prompt_tokens + cfg.rollout.max_new_tokens <= 512
    return "eager" if short and not cfg.resources.use_gpu else "sdpa"


# Devices per role. Each mirrors what that role's Ray bundle reserves (rlhf/cluster/resources.py:
# on CPUs no bundle asks for a GPU), so a model only goes to CUDA where Ray gave the actor one.


def _device(cfg: Config, gpu_share: float) -> str:
    return "cuda" if cfg.resources.use_gpu and gpu_share > 0 else "cpu"


def reference_device(cfg: Config) -> str:
    """Where the reference actor holds its model: cuda or cpu."""
    return _device(cfg, cfg.resources.gpus_per_reference)


def reward_device(cfg: Config) -> str:
    """Where the reward actor holds its reward model: cuda or cpu."""
    return _device(cfg, cfg.resources.gpus_per_reward)


def supervised_accelerator(cfg: Config) -> tuple[str, str]:
    """(DeepSpeed accelerator, process-group backend) of the SFT/RM/DPO workers: Ray Train
    gives each worker one whole GPU when resources.use_gpu is set."""
    return ("cuda", "nccl") if cfg.resources.use_gpu else ("cpu", "gloo")


def learner_accelerator(cfg: Config) -> tuple[str, str]:
    """(DeepSpeed accelerator, process-group backend) of the RL learner ranks, each a Ray actor
    with one whole GPU when resources.use_gpu is set; learner.backend overrides the backend."""
    accelerator, backend = supervised_accelerator(cfg)
    return accelerator, backend if cfg.learner.backend == "auto" else cfg.learner.backend


def gpu_refusal(cfg: Config, cuda_available: bool, cluster_address: str) -> str | None:
    """Why a run cannot have the GPUs it asks for, or None: a run on a local Ray (no cluster
    address) with resources.use_gpu needs a CUDA GPU on this machine. Checked before Ray starts."""
    if not cfg.resources.use_gpu or cuda_available or cluster_address:
        return None
    return ("resources.use_gpu: true, but this machine has no CUDA GPU and no Ray cluster is set "
            "(resources.address or RAY_ADDRESS); set resources.use_gpu: false to run on CPUs, or "
            "submit the run to a GPU cluster (`rlhf submit`)")


def preflight(cfg: Config) -> tuple[str, str]:
    """Everything an RL run can fail on before Ray starts: GPUs it cannot have, models that do
    not exist. Returns (policy folder, reference folder); raises ConfigError."""
    import torch

    address = cfg.resources.address or os.environ.get("RAY_ADDRESS", "")
    refusal = gpu_refusal(cfg, torch.cuda.is_available(), address)
    if refusal:
        raise ConfigError(refusal)
    return resolve_run_models(cfg)
