"""Offline vLLM engines: the engine settings every engine we start shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    pass



def vllm_engine_kwargs(cfg, max_new_tokens: int | None = None) -> dict:
    """Keyword arguments for `vllm.LLM` / `AsyncEngineArgs` shared by every engine we start.

    On CPU the KV cache gets a fixed size: vLLM otherwise reserves a fraction of *all* memory
    (`gpu_memory_utilization`) and refuses to start when other processes hold some of it."""
    new_tokens = max_new_tokens if max_new_tokens is not None else cfg.rollout.max_new_tokens
    kwargs = {
        "dtype": cfg.model.dtype,
        "enforce_eager": cfg.rollout.enforce_eager,
        "tensor_parallel_size": cfg.rollout.tensor_parallel_size,
        "max_model_len": cfg.model.max_prompt_tokens + new_tokens + 8,
        "seed": cfg.train.seed,
    }
    if cfg.resources.use_gpu:
        kwargs["gpu_memory_utilization"] = cfg.rollout.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = int(cfg.rollout.kv_cache_gib * (1 << 30))
    return kwargs
