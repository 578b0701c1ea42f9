"""Placement groups per role from the config's resources.

`role_bundles` is the pure layout (tested without Ray): CPU bundles on this machine, GPU
bundles on clusters, with reward and reference optionally sharing one bundle. `reserve` turns
the layout into one Ray placement group and hands back a scheduling strategy per actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config import Config, ConfigError


@dataclass
class Layout:
    """Bundles of one placement group and which bundle each actor sits in."""

    bundles: list[dict[str, float]] = field(default_factory=list)
    slots: dict[str, list[int]] = field(default_factory=dict)  # role -> bundle index per actor

    def add(self, role: str, bundle: dict[str, float]) -> int:
        self.bundles.append({k: v for k, v in bundle.items() if v > 0})
        self.slots.setdefault(role, []).append(len(self.bundles) - 1)
        return len(self.bundles) - 1

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)


def role_bundles(cfg: Config) -> Layout:
    """rollout engines, learner ranks, reward and reference -> bundles."""
    r, gpu = cfg.resources, cfg.resources.use_gpu
    cpu = r.cpus_per_actor
    layout = Layout()
    for _ in range(cfg.rollout.num_engines):
        layout.add("rollout", {"CPU": cpu, "GPU": r.gpus_per_rollout * cfg.rollout.tensor_parallel_size if gpu else 0})
    for _ in range(cfg.learner.num_ranks):
        layout.add("learner", {"CPU": cpu, "GPU": r.gpus_per_learner if gpu else 0})
    needs_reference = cfg.reference.enabled and cfg.algo.kl_coef > 0
    if r.colocate and needs_reference:
        # Reward and reference are small forward-only models: one shared bundle.
        shared = {"CPU": cpu, "GPU": (r.gpus_per_reward + r.gpus_per_reference) if gpu else 0}
        index = layout.add("reward", shared)
        layout.slots["reference"] = [index]
    else:
        layout.add("reward", {"CPU": cpu, "GPU": r.gpus_per_reward if gpu else 0})
        if needs_reference:
            layout.add("reference", {"CPU": cpu, "GPU": r.gpus_per_reference if gpu else 0})
    return layout


def actor_resources(cfg: Config, role: str, layout: Layout) -> dict[str, float]:
    """What one actor of `role` asks for inside its bundle (shared bundles split it)."""
    bundle = layout.bundles[layout.slots[role][0]]
    sharers = sum(1 for slots in layout.slots.values() if layout.slots[role][0] in slots)
    return {k: v / sharers for k, v in bundle.items()}


def check_fits(layout: Layout, available: dict[str, float]) -> None:
    """Fail before any actor starts when the cluster cannot hold the layout."""
    for resource in ("CPU", "GPU"):
        need, have = layout.total(resource), available.get(resource, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"resources: the run needs {need:g} {resource} ({_describe(layout, resource)}) but the Ray "
                f"cluster has {have:g}; lower rollout.num_engines / learner.num_ranks or resources.*"
            )


def _describe(layout: Layout, resource: str) -> str:
    parts = []
    for role, slots in layout.slots.items():
        amount = sum(layout.bundles[i].get(resource, 0.0) for i in set(slots))
        if amount:
            parts.append(f"{role} {amount:g}")
    return ", ".join(parts)


def reserve(layout: Layout, timeout_s: float = 120.0):
    """Create the placement group and wait for it; returns it."""
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(layout.bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(f"placement group {layout.bundles} could not be scheduled within {timeout_s:.0f}s")
    return pg


def strategy(pg, bundle_index: int):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle_index)
