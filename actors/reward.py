"""Reward role: a reward model (scalar head) plus rule rewards, combined with config weights."""

from __future__ import annotations

import torch

from rlhf.config import Config
from rlhf.models import load_scalar_model, load_tokenizer
from rlhf.rewards import combine, validate_rules


def rm_text(tokenizer, question: str, response: str) -> str:
    """How a (question, response) pair is shown to the reward model."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"Question: {question}\nAnswer: {response}"


class RewardModelScorer:
    """A sequence-classification model with one output: higher is better."""

    def __init__(self, path: str, dtype: str = "float32", micro_batch_size: int = 16, max_length: int = 512):
        self.tokenizer = load_tokenizer(path)
        self.model = load_scalar_model(path, dtype, pad_token_id=self.tokenizer.pad_token_id).eval()
        self.micro_batch_size, self.max_length = micro_batch_size, max_length

    @torch.no_grad()
    def __call__(self, questions: list[str], responses: list[str]) -> list[float]:
        texts = [rm_text(self.tokenizer, q, r) for q, r in zip(questions, responses)]
        scores: list[float] = []
        for start in range(0, len(texts), self.micro_batch_size):
            enc = self.tokenizer(
                texts[start : start + self.micro_batch_size],
                return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
            )
            scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores


class RewardActor:
    """Scores responses. Public methods: score."""

    def __init__(self, cfg: Config):
        validate_rules(cfg.reward.rules)
        self.cfg = cfg.reward
        self.rm = RewardModelScorer(cfg.reward.model_path, cfg.model.dtype) if cfg.reward.model_path else None

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
