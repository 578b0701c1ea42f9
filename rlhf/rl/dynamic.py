"""Dynamic sampling (DAPO): keep only prompt groups whose samples got different rewards.

A group whose n samples all scored the same has zero group-relative advantage, so it adds no
gradient, only KL and noise. With `algo.dynamic_sampling` the trainer draws prompts, samples and
scores them, keeps the informative groups, and draws again until `train.prompts_per_step`
groups are kept or `algo.max_draws` draws are spent; a batch still short is topped up with the
last uninformative groups, so every step trains on the same number of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data.prompts import PromptBatch
from rlhf.rl.batch import Rollout


@dataclass
class Group:
    """One prompt and its n samples, scored."""

    question: str
    reference: str | None
    choices: list[str] | None
    prompt_ids: list[int]
    samples: dict[str, list]  # Rollout field -> the group's entries (prompt_index left out)
    rewards: list[float]  # [n]
    components: dict[str, list[float]]  # reward component -> [n]

    @property
    def informative(self) -> bool:
        return max(self.rewards) - min(self.rewards) > 1e-6


def split_groups(batch: PromptBatch, rollout: Rollout, rewards: list[float],
                 components: dict[str, list[float]]) -> list[Group]:
    """One Group per prompt of `batch`, in prompt order (samples found by rollout.prompt_index)."""
    members: dict[int, list[int]] = {}
    for j, i in enumerate(rollout.prompt_index):
        members.setdefault(i, []).append(j)
    fields = [f for f in Rollout._fields() if f != "prompt_index"]
    return [Group(batch.questions[i], batch.references[i], batch.choices[i], batch.prompt_ids[i],
                  {f: [getattr(rollout, f)[j] for j in rows] for f in fields},
                  [rewards[j] for j in rows], {k: [v[j] for j in rows] for k, v in components.items()})
            for i, rows in sorted(members.items())]


def assemble(groups: list[Group]) -> tuple[PromptBatch, Rollout, list[float], dict[str, list[float]]]:
    """The step's prompts, samples, rewards and reward components from kept groups, in order."""
    batch = PromptBatch([g.question for g in groups], [g.reference for g in groups],
                        [g.choices for g in groups], [g.prompt_ids for g in groups])
    fields = [f for f in Rollout._fields() if f != "prompt_index"]
    columns = {f: [x for g in groups for x in g.samples[f]] for f in fields}
    index = [i for i, g in enumerate(groups) for _ in g.rewards]
    rewards = [r for g in groups for r in g.rewards]
    names = groups[0].components if groups else {}
    components = {k: [x for g in groups for x in g.components[k]] for k in names}
    return batch, Rollout(**columns, prompt_index=index), rewards, components


class GroupFilter:
    """Collects informative groups across draws until `wanted` are kept."""

    def __init__(self, wanted: int):
        self.wanted = wanted
        self.kept: list[Group] = []
        self.spare: list[Group] = []  # uninformative groups, newest last, to top up a short batch
        self.seen = self.draws = 0

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.wanted

    def add(self, groups: list[Group]) -> None:
        self.draws += 1
        self.seen += len(groups)
        for g in groups:
            (self.kept if g.informative else self.spare).append(g)

    def batch(self) -> list[Group]:
        """`wanted` groups: the first informative ones, then the newest spares if too few."""
        short = max(0, self.wanted - len(self.kept))
        return self.kept[: self.wanted] + (self.spare[-short:] if short else [])

    def metrics(self) -> dict[str, float]:
        informative = sum(g.informative for g in self.kept) + sum(g.informative for g in self.spare)
        return {"rollout/groups_dropped_frac": 1.0 - informative / max(1, self.seen),
                "rollout/draws": float(self.draws),
                "rollout/uninformative_in_batch": float(max(0, self.wanted - len(self.kept)))}
