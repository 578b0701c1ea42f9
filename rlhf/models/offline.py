"""Offline vLLM engines: the settings every engine we start shares, and one wrapper that starts
an engine, samples from it, scores given answers with it and frees it.

    with OfflineEngine(model_path, cfg, max_new_tokens=...) as engine:
        samples = engine.sample(prompt_ids, {"temperature": 0.0, "max_tokens": 32, "logprobs": 0})
        scored = engine.teacher_forced_logprobs(prompt_ids, [s[0].token_ids for s in samples])

A long-lived holder (the rollout actor) calls `start()` itself and keeps the engine; `close()`
is the same teardown `with` does on exit. vLLM is imported inside the methods, so importing this
module stays cheap (no vllm, ray or deepspeed).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # vllm loads lazily so `rlhf` imports fast
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

# LoRA ranks vLLM accepts for `max_lora_rank` (vllm/config/lora.py); an adapter of rank r loads
# into an engine whose max_lora_rank is at least r.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def inference_config(cfg):
    """`cfg` with model.dtype set to model.inference_dtype (when given): the config of an
    offline engine that only answers (evaluation, preference-pair sampling)."""
    dtype = cfg.model.inference_dtype or cfg.model.dtype
    return replace(cfg, model=replace(cfg.model, dtype=dtype))


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


def lora_engine_kwargs(rank: int, target_modules: Sequence[str]) -> dict:
    """Engine arguments that let it serve one LoRA adapter of rank `rank` on `target_modules` at
    a time (the policy's current adapter; the base model stays available with no adapter).

    LoRA is wrapped around the target modules only: left to vLLM's default (every supported
    module) the LM head is wrapped too, and vLLM 0.32's CPU LoRA logits path then fails on
    prompt logprobs (its sampler indices cover one row per request, not every prompt token),
    which teacher-forced scoring needs."""
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_lora_rank": fits[0], "max_loras": 1,
            "lora_target_modules": list(target_modules)}


@dataclass
class Sample:
    """One generated answer to one prompt."""

    token_ids: list[int]  # [T] generated tokens (with the final EOS when it stopped on one)
    text: str  # decoded answer, special tokens removed
    logprobs: list[float] | None  # [T] raw logprob of each token; None unless params ask for logprobs
    finish_reason: str | None  # "stop", "length" (None when vLLM gave none)


class OfflineEngine:
    """One in-process `vllm.LLM` built with `vllm_engine_kwargs` (plus `overrides`, e.g. `seed`
    or `worker_extension_cls`). Use it as a context manager, or call `start()`/`close()`."""

    def __init__(self, model_path: str, cfg, max_new_tokens: int | None = None, *, in_process: bool = True,
                 **overrides: Any):
        self.model_path = model_path
        self.engine_kwargs = {**vllm_engine_kwargs(cfg, max_new_tokens), **overrides}
        self.in_process = in_process
        self.llm: LLM | None = None
        self.start_seconds = 0.0  # time spent building the LLM (not importing vllm)

    def start(self) -> OfflineEngine:
        """Build the engine (tens of seconds on CPU; bench/README.md); returns self."""
        if self.in_process:
            # One process instead of three: the engine core runs here, which starts in seconds
            # on CPU and keeps collective_rpc a plain call. Set before vllm reads it.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        started = time.perf_counter()
        self.llm = LLM(model=self.model_path, **self.engine_kwargs)
        self.start_seconds = time.perf_counter() - started
        return self

    def close(self) -> None:
        """Shut the engine down and free it; a second engine often follows in this process."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # Shut the engine core down now rather than whenever the collector finds it: its shutdown
        # also tears down vLLM's distributed state (cleanup_dist_env_and_memory), which the next
        # engine in this process sets up again. Idempotent: the client's finalizer is detached.
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm
        gc.collect()

    def __enter__(self) -> OfflineEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _engine(self) -> LLM:
        if self.llm is None:
            raise RuntimeError("the engine is not started: use `with OfflineEngine(...)` or call start()")
        return self.llm

    def sample(self, prompt_ids: Sequence[Sequence[int]], params: Mapping[str, Any] | SamplingParams,
               use_tqdm: bool = False, lora_request: LoRARequest | None = None) -> list[list[Sample]]:
        """[N][P_i] prompt ids -> [N][n] samples; `params` is a SamplingParams or its keyword
        arguments (n, temperature, top_p, max_tokens, logprobs, ...); `lora_request` samples
        with that adapter on (an engine started with `lora_engine_kwargs`), None with the base."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompt_ids:
            return []
        if isinstance(params, Mapping):
            params = SamplingParams(**params)
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self._engine().generate(prompts, params, use_tqdm=use_tqdm, lora_request=lora_request)
        return [[_sample(s) for s in out.outputs] for out in outputs]

    def teacher_forced_logprobs(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                                lora_request: LoRARequest | None = None) -> list[list[float]]:
        """[N][P_i] prompts and [N][T_i] given responses -> [N][T_i] the engine's raw logprob of
        each response token after its prompt and the response tokens before it (with the
        adapter of `lora_request` on, or the base model when None)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompt_ids:
            return []
        # The one generated token is thrown away; prompt logprobs are raw (pre-temperature), so
        # the temperature does not change them. 1.0 is what the rollout actor has always used:
        # its draw advances the engine's random stream, and later rollouts depend on that.
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        seqs = [TokensPrompt(prompt_token_ids=list(p) + list(r)) for p, r in zip(prompt_ids, response_ids)]
        outputs = self._engine().generate(seqs, params, use_tqdm=False, lora_request=lora_request)
        # Entry i of prompt_logprobs scores token i of the sequence (entry 0, with no context, is None).
        return [[out.prompt_logprobs[len(p) + j][t].logprob for j, t in enumerate(r)]
                for p, r, out in zip(prompt_ids, response_ids, outputs)]


def _sample(completion) -> Sample:
    """A vLLM CompletionOutput -> Sample."""
    tokens = list(completion.token_ids)
    logprobs = None
    if completion.logprobs is not None:  # one {token id: Logprob} per generated token
        logprobs = [step[t].logprob for t, step in zip(tokens, completion.logprobs)]
    return Sample(tokens, completion.text, logprobs, completion.finish_reason)
