"""What a run asks of a Ray cluster: one placement-group bundle per actor, and who sits where.

Pure (no Ray), so the GPU layout is tested on a CPU box and `rlhf submit` can check a run
against a cluster before submitting it. `actors/placement.py` turns a `Layout` into a real
placement group.

Rules:
- each rollout engine gets a bundle with `gpus_per_rollout * tensor_parallel_size` GPUs (one
  whole GPU per tensor-parallel shard);
- each learner rank gets its own bundle, in rank order, so rank i sits in `slots["learner"][i]`;
- with `colocate`, reward and reference (small, forward-only) share one bundle; on GPUs that
  bundle also joins learner rank 0's when their GPU fractions add up to at most one GPU;
- on CPUs (`use_gpu: false`) no bundle asks for a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhf.config.tree import Config
from rlhf.config.typed_yaml import ConfigError

RESOURCES = ("CPU", "GPU")


@dataclass
class Layout:
    """Bundles of one placement group, which bundle each actor sits in, and what it asks for."""

    bundles: list[dict[str, float]] = field(default_factory=list)
    slots: dict[str, list[int]] = field(default_factory=dict)  # role -> bundle index per actor
    asks: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> one actor's share

    def add(self, role: str, ask: dict[str, float]) -> int:
        """A new bundle holding one actor of `role`; returns the bundle index."""
        self.bundles.append({})
        return self.join(role, len(self.bundles) - 1, ask)

    def join(self, role: str, index: int, ask: dict[str, float]) -> int:
        """Put one actor of `role` into bundle `index`, growing the bundle by its ask."""
        ask = {k: float(v) for k, v in ask.items() if v > 0}
        bundle = self.bundles[index]
        for key, value in ask.items():
            bundle[key] = bundle.get(key, 0.0) + value
        self.slots.setdefault(role, []).append(index)
        self.asks[role] = ask
        return index

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)

    def describe(self, resource: str) -> str:
        """`rollout 2, learner 4` for one resource, in role order."""
        parts = []
        for role, slots in self.slots.items():
            amount = self.asks[role].get(resource, 0.0) * len(slots)
            if amount:
                parts.append(f"{role} {amount:g}")
        return ", ".join(parts)


def check_resources(cfg: Config) -> None:
    """GPU and CPU settings that cannot work, named before any placement group is asked for."""
    r = cfg.resources
    _need(r.cpus_per_actor > 0, "resources.cpus_per_actor", "must be more than 0")
    _need(r.cpus_per_rollout >= 0, "resources.cpus_per_rollout", "must be 0 (cpus_per_actor) or more")
    for name in ("gpus_per_rollout", "gpus_per_learner", "gpus_per_reward", "gpus_per_reference"):
        value = getattr(r, name)
        _need(0 <= value <= 1, f"resources.{name}",
              f"must be between 0 and 1 (one actor drives at most one GPU; got {value:g})")
    _need(cfg.rollout.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be at least 1")
    if not r.use_gpu:
        for where, value in (("rollout.weight_sync", cfg.rollout.weight_sync),
                             ("learner.backend", cfg.learner.backend)):
            _need(value != "nccl", where, "nccl needs GPUs; set resources.use_gpu: true or use the default auto")
        return
    on_gpu = "when resources.use_gpu is true"
    _need(r.gpus_per_rollout > 0, "resources.gpus_per_rollout", f"a vLLM engine needs a GPU {on_gpu}")
    _need(r.gpus_per_learner > 0, "resources.gpus_per_learner", f"a learner rank needs a GPU {on_gpu}")
    if cfg.rollout.tensor_parallel_size > 1:
        _need(r.gpus_per_rollout == 1, "resources.gpus_per_rollout",
              f"must be 1 with rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size}: "
              "each tensor-parallel shard holds a whole GPU")


def reference_role(cfg: Config) -> str | None:
    """Who scores the reference logprobs for the KL term: None (no KL), "engine" (LoRA with the
    initial policy as reference: the rollout engine's base weights with the adapter off, so no
    second copy of the model is held) or "actor" (a frozen model in its own actor)."""
    if not (cfg.reference.enabled and cfg.algo.kl_coef > 0):
        return None
    return "engine" if cfg.model.lora.enabled and not cfg.reference.path else "actor"


def role_bundles(cfg: Config) -> Layout:
    """rollout engines, learner ranks, reward and reference -> bundles (see the module rules)."""
    check_resources(cfg)
    r, cpu = cfg.resources, cfg.resources.cpus_per_actor

    def ask(cpus: float, gpus: float, role: str) -> dict[str, float]:
        return {"CPU": cpus, "GPU": gpus if r.use_gpu else 0.0, **r.role_resources.get(role, {})}

    layout = Layout()
    for _ in range(cfg.rollout.num_engines):
        gpus = r.gpus_per_rollout * cfg.rollout.tensor_parallel_size
        layout.add("rollout", ask(r.cpus_per_rollout or cpu, gpus, "rollout"))
    for _ in range(cfg.learner.num_ranks):
        layout.add("learner", ask(cpu, r.gpus_per_learner, "learner"))
    needs_reference = reference_role(cfg) == "actor"
    if r.colocate and needs_reference:
        # Reward and reference are small forward-only models scored at the same time: one
        # bundle's CPU is split between them, and each brings its own GPU fraction. Rule rewards
        # are plain Python, so without a reward model the reference gets the whole bundle (its
        # torch threads follow its CPUs: on half a 2-CPU bundle it ran on one thread, far slower).
        shared_gpu = r.gpus_per_reward + r.gpus_per_reference
        reward_cpu = cpu / 2 if cfg.reward.model_path else 0.0
        learner0 = layout.slots["learner"][0]
        if r.use_gpu and shared_gpu > 0 and r.gpus_per_learner + shared_gpu <= 1 + 1e-9:
            index = layout.join("reward", learner0, ask(reward_cpu, r.gpus_per_reward, "reward"))
        else:
            index = layout.add("reward", ask(reward_cpu, r.gpus_per_reward, "reward"))
        layout.join("reference", index, ask(cpu - reward_cpu, r.gpus_per_reference, "reference"))
    else:
        layout.add("reward", ask(cpu, r.gpus_per_reward, "reward"))
        if needs_reference:
            layout.add("reference", ask(cpu, r.gpus_per_reference, "reference"))
    _check_whole_gpus(layout)
    return layout


def local_cpus(cfg: Config) -> int:
    """Logical CPUs of a local Ray that holds the largest of the run's Ray stages: the RL roles,
    or an SFT/RM/DPO job's workers and its Ray Train controller."""
    finetune = max(section.num_workers + 1 for section in (cfg.sft, cfg.rm, cfg.dpo))
    return cfg.resources.num_cpus or max(finetune, math.ceil(role_bundles(cfg).total("CPU") - 1e-9))


def actor_resources(cfg: Config, role: str, layout: Layout) -> dict[str, float]:
    """What one actor of `role` asks for inside its bundle."""
    return dict(layout.asks[role])


def check_fits(layout: Layout, available: dict[str, float], nodes: list[dict[str, float]] | None = None) -> None:
    """Fail before any actor starts when the cluster cannot hold the layout.

    `available` is the cluster's total per resource; `nodes`, when known, is each node's total,
    because a bundle cannot span nodes (an engine with tensor_parallel_size 8 needs 8 GPUs on one
    node)."""
    for resource in RESOURCES:
        need, have = layout.total(resource), available.get(resource, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"resources: the run needs {need:g} {resource} ({layout.describe(resource)}) but the Ray "
                f"cluster has {have:g}; lower rollout.num_engines / learner.num_ranks or resources.*"
            )
    for resource in sorted({k for bundle in layout.bundles for k in bundle} - set(RESOURCES)):
        need, have = layout.total(resource), available.get(resource, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"resources.role_resources: the run needs {need:g} {resource} ({layout.describe(resource)}) "
                f"but the Ray cluster has {have:g}; start nodes with `ray start --resources "
                f"'{{\"{resource}\": N}}'` or change resources.role_resources"
            )
    for index, bundle in enumerate(layout.bundles if nodes else []):
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in nodes):
            roles = [role for role, slots in layout.slots.items() if index in slots]
            biggest = max(node.get("GPU", 0.0) for node in nodes)
            raise ConfigError(
                f"resources: one {'/'.join(roles)} bundle needs {_show(bundle)} on a single node, but no "
                f"node of the cluster has that much (most GPUs on one node: {biggest:g}); lower "
                "rollout.tensor_parallel_size or resources.*"
            )


def _check_whole_gpus(layout: Layout) -> None:
    # Ray places a bundle of more than one GPU on whole GPUs only.
    for index, bundle in enumerate(layout.bundles):
        gpus = bundle.get("GPU", 0.0)
        if gpus > 1 + 1e-9 and abs(gpus - round(gpus)) > 1e-9:
            roles = [role for role, slots in layout.slots.items() if index in slots]
            raise ConfigError(
                f"resources: {' + '.join(roles)} share a bundle of {gpus:g} GPUs; a shared bundle must "
                "fit on one GPU or use whole GPUs (lower resources.gpus_per_* or set colocate: false)"
            )


def _show(bundle: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in bundle.items())


def _need(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")
