"""Rollout role: a Ray actor holding one vLLM engine that samples responses to prompts.

Logprobs are vLLM's raw (pre-temperature) logprobs of the sampled tokens, the same quantity
the learner computes, so the two can be compared after each weight sync.

With LoRA (`model.lora.enabled`) the engine holds the base weights for the whole run and each
sync loads only the new adapter, under a new adapter id (vLLM caches adapters by id, so reusing
one would keep serving the old tensors). The base model with no adapter is the initial policy,
which is what the reference scores with when it equals the initial policy (`base_logprobs`).
Every rollout names the weight version it sampled with, so the trainer can refuse a stale one.
"""

from __future__ import annotations

import os
import shutil
import time

from actors import gpu_weights
from actors.recovery import Restartable
from actors.weights import WeightPacket, local_path
from rlhf.config.tree import Config
from rlhf.models.offline import OfflineEngine, lora_engine_kwargs
from rlhf.rl.batch import Rollout


class RolloutActor(Restartable):
    """One vLLM engine. Public methods: generate, load_weights, logprobs, base_logprobs, info, and
    the GPU transports' receiving side (init_weight_transfer ... finish_weight_update)."""

    def __init__(self, cfg: Config, model_path: str, run_id: str, engine_index: int = 0):
        self.cfg, self.run_id, self.engine_index = cfg, run_id, engine_index
        # Held for the whole run (never a `with`): engines start once per run. In one process
        # when tensor_parallel_size is 1: the engine core runs inside this actor, which starts
        # in seconds on CPU and keeps collective_rpc a plain call.
        lora = cfg.model.lora
        extra = lora_engine_kwargs(lora.r, lora.target_modules) if lora.enabled else {}
        if cfg.rollout.weight_sync in gpu_weights.GPU_TRANSPORTS:
            # GPU to GPU through vLLM's weight-transfer engine (actors/gpu_weights.py).
            os.environ.update(gpu_weights.engine_env(cfg.rollout.weight_sync))
            extra.update(gpu_weights.engine_kwargs(cfg.rollout.weight_sync))
        self.engine = OfflineEngine(model_path, cfg, in_process=cfg.rollout.tensor_parallel_size == 1,
                                    seed=cfg.train.seed + engine_index,
                                    worker_extension_cls="actors.weights.WeightReceiver", **extra).start()
        self.start_seconds = self.engine.start_seconds
        self.weights_version = 0
        self.adapter = None  # the LoRARequest of the policy's current adapter; None: the base weights

    def info(self) -> dict:
        return {"engine": self.engine_index, "start_seconds": self.start_seconds, "version": self.weights_version}

    def generate(self, prompt_ids: list[list[int]], prompt_index: list[int], seed: int) -> Rollout:
        """n samples for each prompt -> a Rollout with one entry per sample. `seed` reseeds the
        engine's sampler first, so the same step samples the same tokens in a resumed run."""
        r = self.cfg.rollout
        # Not per-request seeds: vLLM's CPU sampler cannot rewind seeded generators when a
        # prefill is chunked ("CPU Generator does not use offset"). Requests without a seed
        # draw from the worker's global torch generator, which this reseeds.
        self.engine.llm.collective_rpc("reseed", args=(seed,))
        params = {"n": r.n_samples, "max_tokens": r.max_new_tokens, "temperature": r.temperature,
                  "top_p": r.top_p, "logprobs": 0}
        samples = self.engine.sample(prompt_ids, params, lora_request=self.adapter)
        parts: dict[str, list] = {k: [] for k in ("prompt_ids", "response_ids", "response_text",
                                                  "rollout_logprobs", "prompt_index", "finish_reason",
                                                  "weight_version")}
        for ids, idx, out in zip(prompt_ids, prompt_index, samples):
            for sample in out:
                parts["prompt_ids"].append(list(ids))
                parts["response_ids"].append(sample.token_ids)
                parts["response_text"].append(sample.text)
                parts["rollout_logprobs"].append(sample.logprobs)
                parts["prompt_index"].append(idx)
                parts["finish_reason"].append(str(sample.finish_reason))
                parts["weight_version"].append(self.weights_version)
        return Rollout(**parts)

    def load_weights(self, packet: WeightPacket) -> float:
        """Swap in new policy weights without restarting the engine; returns seconds taken."""
        if packet.transport in gpu_weights.GPU_TRANSPORTS:
            # Already streamed in by the learner (the methods below); only check it landed.
            if self.weights_version != packet.version:
                raise RuntimeError(f"engine {self.engine_index} holds weight version {self.weights_version} after "
                                   f"a {packet.transport} sync of version {packet.version}")
            return 0.0
        started = time.perf_counter()
        path = local_path(packet, self.run_id)
        if packet.kind == "adapter":
            self._load_adapter(path, packet.version)
        else:
            self.engine.llm.collective_rpc("load_weights_from_file", args=(path,))
        # Cached prefixes were computed with the old weights.
        self.engine.llm.reset_prefix_cache()
        self.weights_version = packet.version
        if packet.transport != "shm":
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        return time.perf_counter() - started

    def _load_adapter(self, folder: str, version: int) -> None:
        """Load the adapter now (not lazily at the next generate, so the sync pays for it and the
        folder may go) under id version + 1 (ids start at 1), then drop the previous one."""
        from vllm.lora.request import LoRARequest

        engine = self.engine.llm.llm_engine
        adapter = LoRARequest(f"policy-v{version}", version + 1, folder)
        if not engine.add_lora(adapter):
            raise RuntimeError(f"vLLM did not load the policy adapter v{version} from {folder}")
        if self.adapter is not None:
            engine.remove_lora(self.adapter.lora_int_id)
        self.adapter = adapter

    # The receiving side of the nccl and ipc transports, called by the learner's rank 0 through
    # vLLM's trainer engine (actors/gpu_weights.py EngineClient) while it sends.

    def init_weight_transfer(self, init_info: dict) -> None:
        gpu_weights.engine_init(self.engine.llm, init_info)

    def start_weight_update(self) -> None:
        gpu_weights.engine_start(self.engine.llm)

    def update_weights(self, update_info: dict) -> None:
        gpu_weights.engine_update(self.engine.llm, update_info)

    def finish_weight_update(self, version: str) -> None:
        gpu_weights.engine_finish(self.engine.llm, version)
        self.weights_version = int(version)

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """[N][T_i] the current policy's logprobs of given responses (teacher forcing via
        prompt logprobs)."""
        return self.engine.teacher_forced_logprobs(prompt_ids, response_ids, lora_request=self.adapter)

    def base_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """[N][T_i] logprobs under the base weights with no adapter: with LoRA, the initial
        policy, i.e. the reference when it is the initial policy."""
        return self.engine.teacher_forced_logprobs(prompt_ids, response_ids)
