"""Learner role: N DeepSpeed ZeRO-3 ranks (each a Ray actor) holding the policy and the critic.

ZeRO-3 gathers each layer's parameters collectively during forward and backward, so every
method that runs the model is called on all ranks at once with equal-sized shards; the
`LearnerGroup` wrapper does that fan-out. Rank 0 gathers full weights for sync and export.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from actors.gpu_weights import (
    DEFAULT_BUCKET_BYTES,
    GPU_TRANSPORTS,
    GpuWeightSender,
    full_shapes,
    gathered_buckets,
    plan_buckets,
    ray_call,
    wire_meta,
)
from actors.placement import Placed
from rlhf.cluster.session import multi_node
from rlhf.config.tree import Config
from rlhf.models.loading import load_causal_lm, load_critic, load_tokenizer
from rlhf.models.logprobs import response_logprobs, token_values
from rlhf.models.runtime import attention_impl, learner_accelerator, learner_bf16
from rlhf.models.zero import build_engine, engine_config, gather_adapter, gather_full_state, save_hf
from rlhf.rl.advantages import ADVANTAGES
from rlhf.rl.aggregation import AGGREGATIONS, aggregate, mini_batch_units
from rlhf.rl.batch import Experience, Samples
from rlhf.rl.kl import kl_loss
from rlhf.rl.losses import POLICY_LOSSES, truncated_is_weights, value_loss
from rlhf.rl.masked import masked_mean


def sampling_policy_stats(logp: torch.Tensor, entropy: torch.Tensor, rollout_logprobs: torch.Tensor,
                          mask: torch.Tensor) -> dict[str, float]:
    """Entropy of the policy that sampled and its gap to the engine's logprobs, from the first
    learner pass over the batch (the old pass, or the update's own when it stands in).
    logp, entropy, rollout_logprobs, mask [b, T] -> {"objective/entropy", "rollout/behaviour_logprob_diff"}."""
    gap = (logp - rollout_logprobs).abs()[mask.bool()]
    return {"objective/entropy": float(masked_mean(entropy, mask)),
            "rollout/behaviour_logprob_diff": float(gap.mean()) if len(gap) else 0.0}


def _join(parts: list):
    """Concatenate the ranks' tensors; average their float stats (equal shards)."""
    if parts[0] is None:
        return None
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else sum(parts) / len(parts)


def batch_geometry(cfg: Config) -> tuple[int, int]:
    """(micro-batch size, gradient-accumulation steps) per rank for one optimizer step."""
    sequences = cfg.train.prompts_per_step * cfg.rollout.n_samples
    per_rank = sequences // (cfg.learner.num_ranks * cfg.learner.mini_batches)
    micro = min(cfg.learner.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ValueError(
            f"learner.micro_batch_size={micro} does not divide the {per_rank} sequences each rank "
            "gets per mini-batch"
        )
    return micro, per_rank // micro


def rendezvous_address(use_gpu: bool) -> str:
    """Where the ranks meet: loopback when the Ray cluster is this one machine (CPU), else this
    node's address as Ray knows it, which the other nodes reach."""
    import ray

    if not use_gpu and not multi_node():
        return "127.0.0.1"
    return ray.util.get_node_ip_address()


class LearnerRank(Placed):
    """One ZeRO-3 rank. Public methods: address, setup, forward, update, publish_weights,
    save, load, export, partition_info."""

    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int, run_id: str):
        self.cfg, self.model_path, self.rank, self.world_size, self.run_id = cfg, model_path, rank, world_size, run_id
        self.version = 0
        # Set before deepspeed is imported (it reads the accelerator once): explicitly, so a
        # shell's DS_ACCELERATOR=cpu cannot put a GPU rank on the CPU.
        self.accelerator, self.backend = learner_accelerator(cfg)
        os.environ["DS_ACCELERATOR"] = self.accelerator

    def address(self) -> tuple[str, int]:
        """This node's address and a free port for the process group (asked of rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return rendezvous_address(self.cfg.resources.use_gpu), port

    def setup(self, master_addr: str, master_port: int) -> dict:
        """Join the process group and build the DeepSpeed engines (collective)."""
        import deepspeed

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        deepspeed.init_distributed(dist_backend=self.backend)
        torch.manual_seed(self.cfg.train.seed)
        self.device = torch.device("cuda", 0) if self.accelerator == "cuda" else torch.device("cpu")
        micro, accum = batch_geometry(self.cfg)
        self.micro = micro
        attention = attention_impl(self.cfg)
        # Loaded in fp32: DeepSpeed keeps fp32 master weights and casts the module to bf16 itself.
        self.policy = self._engine(lambda: load_causal_lm(self.model_path, "float32", attention),
                                   self.cfg.learner.lr, micro, accum)
        self.critic = None
        if ADVANTAGES[self.cfg.algo.name].needs_critic:
            self.critic = self._engine(lambda: load_critic(self.model_path, "float32"), self.cfg.learner.critic_lr,
                                       micro, accum)
        return self.partition_info()

    def _engine(self, build, lr: float, micro: int, accum: int):
        ds, learner = self.cfg.learner.deepspeed, self.cfg.learner
        config = engine_config(micro, accum, self.world_size, ds.zero_stage, ds.gradient_clipping,
                               learner_bf16(self.cfg), ds.offload_optimizer)
        return build_engine(build, config, lr, self.cfg.model.lora, learner.warmup_steps,
                            tuple(learner.adam_betas), learner.weight_decay)

    # ------------------------------------------------------------------------- passes

    @torch.no_grad()
    def forward(self, samples: Samples) -> dict:
        """Old logprobs [b, T] and critic values [b, T] (or None) for this rank's shard, with
        the entropy and behaviour-gap stats of the policy that sampled."""
        samples = samples.to(self.device)
        self.policy.eval()
        out: dict = {"old_logprobs": [], "values": []}
        stats: dict[str, list[float]] = {}
        for micro in samples.split(self.micro):
            logp, ent = response_logprobs(self.policy, micro.sequences, micro.attention_mask, micro.prompt_len,
                                          micro.response_len, with_entropy=True,
                                          share_prompts=self.cfg.learner.share_prompts)
            out["old_logprobs"].append(logp.cpu())
            for name, value in sampling_policy_stats(logp, ent, micro.rollout_logprobs, micro.response_mask).items():
                stats.setdefault(name, []).append(value)
            if self.critic is not None:
                out["values"].append(token_values(self.critic, micro.sequences, micro.attention_mask,
                                                  micro.prompt_len, micro.response_len).cpu())
        tensors = {k: torch.cat(v) if v else None for k, v in out.items()}
        return {**tensors, **{k: sum(v) / len(v) for k, v in stats.items()}}

    def update(self, exp: Experience, kl_coef: float) -> dict:
        """PPO epochs over this rank's shard: mini-batches, micro-batches, accumulation."""
        exp = exp.to(self.device)
        self.policy.train()
        stats: dict[str, list[float]] = {}
        self.clock = {"timing/learner_forward": 0.0, "timing/learner_backward": 0.0, "timing/learner_step": 0.0}
        for _ in range(self.cfg.learner.ppo_epochs):
            for mini in exp.chunk(self.cfg.learner.mini_batches):
                micros = mini.split(self.micro)
                units = self._units(micros)
                for micro in micros:
                    for name, value in self._micro_step(micro, kl_coef, units, len(micros)).items():
                        stats.setdefault(name, []).append(value)
        stats["perf/lr"] = [self.policy.get_lr()[0]]
        self.version += 1
        # Seconds summed over micro-batches: where the update phase goes, inside this rank.
        return {**{k: sum(v) / len(v) for k, v in stats.items()}, **self.clock}

    def _units(self, micros: list[Experience]) -> float | None:
        """The aggregation's count over this mini-batch on every rank (collective), or None when
        it counts per micro-batch."""
        agg = self.cfg.algo.loss_agg
        if AGGREGATIONS[agg].per_micro:
            return None
        units = torch.tensor(mini_batch_units(agg, [m.response_mask for m in micros]), dtype=torch.float64)
        if self.world_size > 1:
            torch.distributed.all_reduce(units)
        return float(units)

    def _policy_term(self, loss_tok: torch.Tensor, mask: torch.Tensor, units: float | None, accum: int):
        """This micro-batch's share of the mini-batch policy loss (rlhf/rl/aggregation.py)."""
        agg = self.cfg.algo.loss_agg
        t_max = self.cfg.rollout.max_new_tokens
        if units is None:  # per micro-batch: DeepSpeed's own averaging over micro-batches and ranks
            return aggregate(agg, loss_tok, mask, AGGREGATIONS[agg].count(mask), t_max)
        return aggregate(agg, loss_tok, mask, units, t_max, scale=accum * self.world_size)

    def _micro_step(self, micro: Experience, kl_coef: float, units: float | None, accum: int) -> dict:
        a = self.cfg.algo
        mask = micro.response_mask
        started = time.perf_counter()
        logp, entropy = response_logprobs(self.policy, micro.sequences, micro.attention_mask, micro.prompt_len,
                                          micro.response_len, with_entropy=True,
                                          share_prompts=self.cfg.learner.share_prompts)
        # No old logprobs: the batch gets one optimizer step, so the policy has not moved since
        # sampling, the trainer skipped the old pass, and this pass stands in (ratio exactly 1).
        single = micro.old_logprobs is None
        old = logp.detach() if single else micro.old_logprobs
        loss_tok, stats = POLICY_LOSSES[a.policy_loss](logp, old, micro.advantages, mask, a)
        if a.tis_cap > 0:
            weights, tis_stats = truncated_is_weights(old, micro.rollout_logprobs, mask, a.tis_cap)
            loss_tok = loss_tok * weights
            stats.update(tis_stats)
        loss = self._policy_term(loss_tok, mask, units, accum)
        if single:
            stats.update(sampling_policy_stats(logp.detach(), entropy.detach(), micro.rollout_logprobs, mask))
        if a.entropy_coef > 0:
            # Entropy bonus: keeps the policy from collapsing onto one answer too early.
            loss = loss - a.entropy_coef * masked_mean(entropy, mask)
        if micro.ref_logprobs is not None and not a.kl_in_reward and kl_coef > 0:
            kl = kl_loss(logp, micro.ref_logprobs, mask, a.kl_estimator)
            loss = loss + kl_coef * kl
            stats["loss/kl"] = float(kl)
        backward_at = time.perf_counter()
        self.policy.backward(loss)
        step_at = time.perf_counter()
        self.policy.step()
        for name, seconds in (("forward", backward_at - started), ("backward", step_at - backward_at),
                              ("step", time.perf_counter() - step_at)):
            self.clock[f"timing/learner_{name}"] += seconds
        stats["loss/total"] = float(loss)
        if self.critic is not None:
            values = token_values(self.critic, micro.sequences, micro.attention_mask, micro.prompt_len,
                                  micro.response_len)
            vloss, vstats = value_loss(values, micro.values, micro.returns, mask, a.value_clip)
            self.critic.backward(a.vf_coef * vloss)
            self.critic.step()
            stats.update(vstats)
        return {k: float(v) for k, v in stats.items()}

    # ------------------------------------------------------------------------- weights

    def _full_state(self, engine) -> dict | None:
        """Collective gather; rank 0 gets the full state dict (LoRA merged), others None."""
        return gather_full_state(engine.module, self.rank, self.cfg.model.lora)

    def publish_weights(self, transport: str):
        """Collective: gather the policy; rank 0 publishes a WeightPacket, others return None.
        With LoRA only the adapter is gathered and published (the engines keep the base)."""
        from actors.weights import publish, publish_adapter

        if transport in GPU_TRANSPORTS:
            return self._stream_weights(transport)
        if self.cfg.model.lora.enabled:
            gathered = gather_adapter(self.policy.module, self.rank)
            if gathered is None:
                return None
            state, config = gathered
            # In the engine's dtype, as the full weights are (vLLM casts adapters to it anyway).
            state = {k: v.to(self._engine_dtype()) for k, v in state.items()}
            return publish_adapter(state, config, self.run_id, self.version, transport)
        state = self._full_state(self.policy)
        if state is None:
            return None
        state = {k: v.to(self._engine_dtype()) for k, v in state.items()}
        return publish(state, self.run_id, self.version, transport)

    def connect_engines(self, engines: list, address: str, port: int) -> None:
        """Collective, nccl/ipc only: join the rollout engines through vLLM's weight-transfer
        engine (rank 0 sends; `address:port` is a free port on rank 0's node for the NCCL group)."""
        tp = [self.cfg.rollout.tensor_parallel_size] * len(engines)
        self.sender = GpuWeightSender(self.cfg.rollout.weight_sync, self.rank, tp,
                                      ray_call(engines) if self.rank == 0 else None, dtype=self._engine_dtype(),
                                      master_address=address, master_port=port)
        shapes = full_shapes(self.policy.module)
        self.sender.setup(shapes)
        self.bucket_plan = plan_buckets([(name, nbytes) for name, _, nbytes in shapes], DEFAULT_BUCKET_BYTES)
        sent = wire_meta([(name, shape) for name, shape, _ in shapes])
        self.wire_bytes = sum(math.prod(shape) for _, shape in sent) * self._engine_dtype().itemsize

    def _stream_weights(self, transport: str):
        """Collective: gather and send one bucket at a time straight into the engines (no file,
        no second full copy); rank 0 returns the packet that names the version sent."""
        from actors.weights import WeightPacket

        self.sender.send(gathered_buckets(self.policy.module, self.bucket_plan), self.version)
        return WeightPacket(self.version, transport, num_bytes=self.wire_bytes) if self.rank == 0 else None

    def _engine_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.model.dtype == "bfloat16" else torch.float32

    def partition_info(self) -> dict:
        """How much of the policy this rank holds: {"local": numel, "full": numel}."""
        local = full = 0
        for p in self.policy.module.parameters():
            full += getattr(p, "ds_numel", p.numel())
            local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        return {"rank": self.rank, "local": local, "full": full}

    # ------------------------------------------------------------------------- checkpoints

    def save(self, folder: str, tag: str) -> None:
        """Collective: each rank writes its partitions, optimizer moments and RNG."""
        client = {"version": self.version, "torch_rng": torch.get_rng_state()}
        self.policy.save_checkpoint(os.path.join(folder, "policy"), tag=tag, client_state=client)
        if self.critic is not None:
            self.critic.save_checkpoint(os.path.join(folder, "critic"), tag=tag)

    def load(self, folder: str, tag: str) -> int:
        _, client = self.policy.load_checkpoint(os.path.join(folder, "policy"), tag=tag)
        if self.critic is not None:
            self.critic.load_checkpoint(os.path.join(folder, "critic"), tag=tag)
        self.version = int(client["version"])
        torch.set_rng_state(client["torch_rng"])
        return self.version

    def weight_version(self) -> int:
        """The policy version this rank last trained to (what a sync publishes)."""
        return self.version

    def optimizer_fingerprint(self) -> float:
        """Sum of |Adam moments| on this rank: a cheap check that a resume restored them."""
        total = 0.0
        opt = self.policy.optimizer
        inner = getattr(opt, "optimizer", opt)
        for state in inner.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    total += float(state[key].abs().sum())
        return total

    def export(self, out_dir: str) -> str | None:
        """Collective: write the policy as a Hugging Face folder (rank 0 writes)."""
        state = self._full_state(self.policy)
        if state is None:
            return None
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.model_path)
        return str(save_hf(state, config, out_dir, load_tokenizer(self.model_path), AutoModelForCausalLM))


class LearnerGroup:
    """Fans calls out to all ranks with equal shards; futures let the trainer overlap passes.

    `get` resolves Ray object refs (ray.get by default; the launcher passes one that names the
    role when an actor fails). `start` (the launcher's) makes and sets up a fresh set of ranks in
    the group's bundles, which `restart` uses."""

    def __init__(self, ranks: list, transport: str, get: Callable | None = None,
                 start: Callable[[], list] | None = None):
        import ray

        self.ranks, self.transport, self.start = ranks, transport, start
        self.get = get or ray.get
        self.pool = ThreadPoolExecutor(max_workers=4)

    def restart(self) -> None:
        """Replace every rank with a fresh one holding the initial model (`load` a checkpoint
        next): when one rank dies, the others wait in a collective for it forever."""
        import ray

        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        self.ranks = self.start()

    def _all(self, method: str, *args) -> list:
        return self.get([getattr(r, method).remote(*args) for r in self.ranks])

    def _sharded(self, method: str, batch: Samples | Experience, *args) -> list:
        shards = batch.chunk(len(self.ranks))
        return self.get([getattr(r, method).remote(s, *args) for r, s in zip(self.ranks, shards)])

    def forward_async(self, samples: Samples) -> Future:
        def run() -> dict:
            parts = self._sharded("forward", samples)
            return {k: _join([p[k] for p in parts]) for k in parts[0]}

        return self.pool.submit(run)

    def update(self, exp: Experience, kl_coef: float) -> dict:
        parts = self._sharded("update", exp, kl_coef)
        return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}

    def publish_weights(self):
        return self._all("publish_weights", self.transport)[0]

    def weight_version(self) -> int:
        return self._all("weight_version")[0]

    def save(self, folder: str, tag: str) -> None:
        self._all("save", folder, tag)

    def load(self, folder: str, tag: str) -> int:
        return self._all("load", folder, tag)[0]

    def export(self, out_dir: str) -> str:
        return self._all("export", out_dir)[0]

    def partition_info(self) -> list[dict]:
        return self._all("partition_info")

    def optimizer_fingerprints(self) -> list[float]:
        """Per rank, the sum of |Adam moments| (a cheap check that a resume restored them)."""
        return self._all("optimizer_fingerprint")
