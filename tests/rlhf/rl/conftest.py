"""The RL roles built from their real classes in this process, without Ray, and handed to the
trainer through the Protocols of rlhf/rl/trainer.py: rollout on a vLLM engine, rule rewards, the
reference (its own frozen model, or the engine's base weights under LoRA) and a one-rank ZeRO-3
learner on gloo."""

from __future__ import annotations

import socket
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from rlhf.rl.batch import Experience, Samples
from rlhf.rl.trainer import Roles

POOL = ThreadPoolExecutor(max_workers=3)


def _later(fn, *args) -> Future:
    return POOL.submit(fn, *args)


class Engines:
    """RolloutEngines over one in-process RolloutActor."""

    def __init__(self, actor):
        self.actor = actor

    def generate(self, prompt_ids, prompt_index, seed):
        return self.actor.generate(prompt_ids, prompt_index, seed).sorted_by_prompt()

    def load_weights(self, packet) -> float:
        return self.actor.load_weights(packet)

    def logprobs(self, prompt_ids, response_ids):
        return self.actor.logprobs(prompt_ids, response_ids)

    def base_logprobs(self, prompt_ids, response_ids):
        return self.actor.base_logprobs(prompt_ids, response_ids)


class Scorer:
    def __init__(self, actor):
        self.actor = actor

    def score_async(self, *args) -> Future:
        return _later(self.actor.score, *args)


class Reference:
    def __init__(self, actor):
        self.actor = actor

    def logprobs_async(self, *args) -> Future:
        return _later(self.actor.logprobs, *args)


class OneRank:
    """Learner over one LearnerRank; records every batch it is asked to train on."""

    def __init__(self, rank):
        self.rank, self.updates = rank, []

    def forward_async(self, samples: Samples) -> Future:
        return _later(self.rank.forward, samples)

    def update(self, exp: Experience, kl_coef: float) -> dict:
        self.updates.append(exp)
        return self.rank.update(exp, kl_coef)

    def publish_weights(self):
        return self.rank.publish_weights("shm")

    def weight_version(self):
        return self.rank.weight_version()

    def save(self, folder, tag):
        self.rank.save(folder, tag)

    def load(self, folder, tag):
        return self.rank.load(folder, tag)

    def export(self, out_dir):
        return self.rank.export(out_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_roles(cfg, model_dir: str, run_id: str) -> Roles:
    """Every role of `cfg` in this process (the reference as rlhf/cluster/resources.py
    reference_role says: its own actor, the engine's base weights, or none)."""
    from actors.launch import EngineReference
    from actors.learner import LearnerRank
    from actors.reference import ReferenceActor
    from actors.reward import RewardActor
    from actors.rollout import RolloutActor
    from rlhf.cluster.resources import reference_role

    _fresh_process_group()
    rank = LearnerRank(cfg, model_dir, 0, 1, run_id)
    rank.setup("127.0.0.1", _free_port())
    engines = Engines(RolloutActor(cfg, model_dir, run_id))
    references = {"actor": lambda: Reference(ReferenceActor(cfg, model_dir)),
                  "engine": lambda: EngineReference(engines, POOL), None: lambda: None}
    return Roles(rollout=engines, reward=Scorer(RewardActor(cfg)), reference=references[reference_role(cfg)](),
                 learner=OneRank(rank), num_ranks=1)


def _fresh_process_group() -> None:
    """A new learner in this process gets a process group of its own. A vLLM engine that an
    earlier module closed (or the collector finalised) destroyed the group DeepSpeed cached as
    its world group; in a real run each rank is its own Ray actor process and never meets this."""
    import gc

    import torch.distributed as dist
    from deepspeed.utils import groups
    from vllm.distributed import parallel_state

    # An earlier module's engine, unreferenced but not yet collected, tears the process group
    # down when the collector finalises it: let that happen now, not in the middle of the setup.
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    groups._WORLD_GROUP = groups._DATA_PARALLEL_GROUP = None
    # vLLM's groups of the earlier engine were on that process group: the next engine makes its own.
    for name, value in list(vars(parallel_state).items()):
        if isinstance(value, parallel_state.GroupCoordinator):
            setattr(parallel_state, name, None)


def close_roles(roles: Roles, run_id: str) -> None:
    """Free the run's shared-memory weights. The engine is left to the collector: closing it
    tears down the torch.distributed group that the learner's DeepSpeed shares in this process,
    and the next module's learner would find it gone."""
    from actors.weights import cleanup

    cleanup(run_id)


@pytest.fixture(scope="session")
def inprocess_roles():
    """(build_roles, close_roles): roles of a config in this process, and their teardown."""
    return build_roles, close_roles
