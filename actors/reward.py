"""Reward role: a reward model (scalar head) plus rule rewards, combined with config weights."""

from __future__ import annotations

import torch

from actors.recovery import Restartable
from rlhf.config.tree import Config
from rlhf.models.runtime import reward_device
from rlhf.models.scorer import RewardModelScorer
from rlhf.rl.rewards import combine


class RewardActor(Restartable):
    """Scores responses. Public methods: score."""

    def __init__(self, cfg: Config):
        self.cfg = cfg.reward
        self.rm = None
        if cfg.reward.model_path:
            self.rm = RewardModelScorer(cfg.reward.model_path, cfg.model.dtype, device=reward_device(cfg))

    def score(self, questions: list[str], responses: list[str], references: list[str | None],
              choices: list[list[str] | None], n_tokens: list[int]) -> tuple[list[float], dict[str, list[float]]]:
        """-> (total reward per sample [B], {component name: [B]})."""
        totals, components = self._rules(questions, responses, references, choices, n_tokens)
        if self.rm is not None:
            rm = torch.tensor(self.rm(questions, responses))
            if self.cfg.normalize and len(rm) > 1:
                rm = (rm - rm.mean()) / (rm.std() + 1e-6)
            components["reward/model"] = rm.tolist()
            totals = [t + self.cfg.model_weight * s for t, s in zip(totals, rm.tolist())]
        return totals, components

    def _rules(self, questions, responses, references, choices, n_tokens):
        totals: list[float] = []
        components: dict[str, list[float]] = {}
        for q, r, ref, ch, n in zip(questions, responses, references, choices, n_tokens):
            total, parts = combine(r, ref, self.cfg.rules, prompt=q, choices=ch, n_tokens=n,
                                   target_length=self.cfg.target_length)
            totals.append(total)
            for name, value in parts.items():
                components.setdefault(name, []).append(value)
        return totals, components
