"""Placement groups per role: `reserve` turns a layout into one Ray placement group,
`strategy` hands back the scheduling strategy for one bundle, and `Placed` lets every role's
actor say where it landed.

The layout itself (`Layout`, `role_bundles`, `actor_resources`, `check_fits`) is pure and lives
in rlhf/cluster/resources.py, so `rlhf submit` can check a run against a cluster without Ray.
"""

from __future__ import annotations

from rlhf.cluster.resources import Layout


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


class Placed:
    """Mixed into every role's actor: `where` names the process and the Ray node it runs on."""

    def where(self) -> dict:
        import os

        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address()}
