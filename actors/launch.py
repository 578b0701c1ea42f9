"""Start the four roles as Ray actors in their placement group and wrap them for the driver."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from actors import placement
from actors.learner import LearnerGroup, LearnerRank
from actors.reference import ReferenceActor
from actors.reward import RewardActor
from actors.rollout import RolloutActor
from actors.weights import resolve_transport
from rlhf.batch import Rollout
from rlhf.config import Config
from rlhf.loop import Roles


class ActorFailed(RuntimeError):
    """An actor died or raised; the message names its role."""


def _get(role: str, refs):
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayActorError as exc:
        raise ActorFailed(f"{role} actor died: {exc}") from None
    except ray.exceptions.RayTaskError as exc:
        raise ActorFailed(f"{role} actor failed: {exc}") from None


class RolloutGroup:
    """Splits prompts across engines and joins their samples back in prompt order."""

    def __init__(self, engines: list):
        self.engines = engines

    def generate(self, prompt_ids, prompt_index) -> Rollout:
        k = len(self.engines)
        refs = [e.generate.remote(prompt_ids[i::k], prompt_index[i::k]) for i, e in enumerate(self.engines)]
        return Rollout.concat(_get("rollout", refs)).sorted_by_prompt()

    def load_weights(self, packet) -> float:
        return max(_get("rollout", [e.load_weights.remote(packet) for e in self.engines]))

    def logprobs(self, prompt_ids, response_ids):
        return _get("rollout", self.engines[0].logprobs.remote(prompt_ids, response_ids))


class AsyncHandle:
    """Turns `actor.method.remote(...)` into a concurrent.futures.Future for the driver."""

    def __init__(self, role: str, actor, pool: ThreadPoolExecutor):
        self.role, self.actor, self.pool = role, actor, pool

    def call(self, method: str, *args) -> Future:
        ref = getattr(self.actor, method).remote(*args)
        return self.pool.submit(_get, self.role, ref)


class RewardClient(AsyncHandle):
    def score_async(self, *args) -> Future:
        return self.call("score", *args)


class ReferenceClient(AsyncHandle):
    def logprobs_async(self, *args) -> Future:
        return self.call("logprobs", *args)


_STARTED_RAY = False  # True when this process started Ray (and so should stop it)
_GROUPS: dict = {}  # run id -> placement group; removing it stops the run's actors


def init_ray(cfg: Config) -> None:
    """Join the configured cluster, or an already connected one (e.g. inside a Tune trial),
    or start a local Ray."""
    import ray

    global _STARTED_RAY
    if ray.is_initialized():
        return
    _STARTED_RAY = True
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("RLHF_", "HF_", "VLLM_", "DS_"))}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
        return
    # On one CPU box the roles take turns (generate, then score, then update), so logical CPUs
    # may exceed physical cores; each actor still gets torch threads = its bundle's CPUs.
    needed = placement.role_bundles(cfg).total("CPU")
    num_cpus = cfg.resources.num_cpus or max(os.cpu_count() or 1, int(needed + 0.999))
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False)


def start_roles(cfg: Config, model_path: str, ref_path: str, run_id: str) -> Roles:
    """Reserve the placement group, start every actor, wait until all are ready."""
    import ray

    init_ray(cfg)
    layout = placement.role_bundles(cfg)
    placement.check_fits(layout, ray.cluster_resources())
    pg, offset = _enclosing_group(layout)
    if pg is None:
        pg, offset = placement.reserve(layout), 0
        _GROUPS[run_id] = pg  # ours to remove; an enclosing group belongs to its creator

    def spawn(cls, role: str, index: int, *args):
        res = placement.actor_resources(cfg, role, layout)
        opts = {"num_cpus": res.get("CPU", 0), "num_gpus": res.get("GPU", 0),
                "scheduling_strategy": placement.strategy(pg, offset + layout.slots[role][index])}
        return ray.remote(cls).options(**opts).remote(*args)

    engines = [spawn(RolloutActor, "rollout", i, cfg, model_path, run_id, i) for i in range(cfg.rollout.num_engines)]
    ranks = [spawn(LearnerRank, "learner", i, cfg, model_path, i, cfg.learner.num_ranks, run_id)
             for i in range(cfg.learner.num_ranks)]
    reward = spawn(RewardActor, "reward", 0, cfg)
    reference = spawn(ReferenceActor, "reference", 0, cfg, ref_path) if "reference" in layout.slots else None
    addr, port = _get("learner", ranks[0].address.remote())
    _get("learner", [r.setup.remote(addr, port) for r in ranks])
    _get("rollout", [e.info.remote() for e in engines])
    pool = ThreadPoolExecutor(max_workers=4)
    transport = resolve_transport(cfg.rollout.weight_sync, multi_node=len(ray.nodes()) > 1)
    return Roles(
        rollout=RolloutGroup(engines),
        reward=RewardClient("reward", reward, pool),
        reference=ReferenceClient("reference", reference, pool) if reference is not None else None,
        learner=LearnerGroup(ranks, transport, get=lambda refs: _get("learner", refs)),
        num_ranks=cfg.learner.num_ranks,
    )


def _enclosing_group(layout: placement.Layout):
    """The placement group this process runs in when its last bundles are exactly the run's
    layout (a Ray Tune trial reserves [trial] + role bundles), with the index of the first role
    bundle; else (None, 0). Reserving a second group there would hold every resource twice."""
    from ray.util.placement_group import get_current_placement_group

    pg = get_current_placement_group()
    n = len(layout.bundles)
    if pg is None or len(pg.bundle_specs) < n:
        return None, 0
    offset = len(pg.bundle_specs) - n
    if pg.bundle_specs[offset:] != layout.bundles:
        return None, 0
    return pg, offset


def shutdown(run_id: str) -> None:
    import ray

    from actors.weights import cleanup

    global _STARTED_RAY
    cleanup(run_id)
    pg = _GROUPS.pop(run_id, None)
    if pg is not None and ray.is_initialized():
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
    if _STARTED_RAY and ray.is_initialized():
        ray.shutdown()
        _STARTED_RAY = False
