"""Rollout role: a Ray actor holding one vLLM engine that samples responses to prompts.

Logprobs are vLLM's raw (pre-temperature) logprobs of the sampled tokens, the same quantity
the learner computes, so the two can be compared after each weight sync.
"""

from __future__ import annotations

import os
import time

from actors.weights import WeightPacket, local_path
from rlhf.config.tree import Config
from rlhf.models.offline import OfflineEngine
from rlhf.rl.batch import Rollout


class RolloutActor:
    """One vLLM engine. Public methods: generate, load_weights, logprobs, info."""

    def __init__(self, cfg: Config, model_path: str, run_id: str, engine_index: int = 0):
        self.cfg, self.run_id, self.engine_index = cfg, run_id, engine_index
        # Held for the whole run (never a `with`): engines start once per run. In one process
        # when tensor_parallel_size is 1: the engine core runs inside this actor, which starts
        # in seconds on CPU and keeps collective_rpc a plain call.
        self.engine = OfflineEngine(model_path, cfg, in_process=cfg.rollout.tensor_parallel_size == 1,
                                    seed=cfg.train.seed + engine_index,
                                    worker_extension_cls="actors.weights.WeightReceiver").start()
        self.start_seconds = self.engine.start_seconds
        self.weights_version = 0

    def info(self) -> dict:
        return {"engine": self.engine_index, "start_seconds": self.start_seconds, "version": self.weights_version}

    def generate(self, prompt_ids: list[list[int]], prompt_index: list[int]) -> Rollout:
        """n samples for each prompt -> a Rollout with one entry per sample."""
        r = self.cfg.rollout
        # No per-request seeds: vLLM's CPU sampler cannot rewind seeded generators when a
        # prefill is chunked ("CPU Generator does not use offset"); the engine seed keeps runs
        # reproducible instead.
        params = {"n": r.n_samples, "max_tokens": r.max_new_tokens, "temperature": r.temperature,
                  "top_p": r.top_p, "logprobs": 0}
        samples = self.engine.sample(prompt_ids, params)
        parts: dict[str, list] = {k: [] for k in ("prompt_ids", "response_ids", "response_text",
                                                  "rollout_logprobs", "prompt_index", "finish_reason")}
        for ids, idx, out in zip(prompt_ids, prompt_index, samples):
            for sample in out:
                parts["prompt_ids"].append(list(ids))
                parts["response_ids"].append(sample.token_ids)
                parts["response_text"].append(sample.text)
                parts["rollout_logprobs"].append(sample.logprobs)
                parts["prompt_index"].append(idx)
                parts["finish_reason"].append(str(sample.finish_reason))
        return Rollout(**parts)

    def load_weights(self, packet: WeightPacket) -> float:
        """Swap in new policy weights without restarting the engine; returns seconds taken."""
        started = time.perf_counter()
        path = local_path(packet, self.run_id)
        self.engine.llm.collective_rpc("load_weights_from_file", args=(path,))
        # Cached prefixes were computed with the old weights.
        self.engine.llm.reset_prefix_cache()
        self.weights_version = packet.version
        if packet.transport != "shm":
            os.unlink(path)
        return time.perf_counter() - started

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """[N][T_i] engine logprobs of given responses (teacher forcing via prompt logprobs)."""
        return self.engine.teacher_forced_logprobs(prompt_ids, response_ids)
