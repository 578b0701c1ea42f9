"""Losses of the supervised stages: SFT, reward modelling (Bradley-Terry) and DPO.

Pure tensor functions like rlhf.algos. Shapes: B sequences (or pairs), L tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label of tokens that carry no loss (prompt and padding)


def shifted_token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """logits [B, L, V], labels [B, L] (IGNORE where no loss) -> (logp [B, L-1], mask [B, L-1]).

    Position i's logits predict token i + 1, so labels shift left by one."""
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sft_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """Mean cross-entropy over answer tokens -> (loss, number of answer tokens)."""
    logp, mask = shifted_token_logprobs(logits, labels)
    count = int(mask.sum())
    return -logp.sum() / max(count, 1), count


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of answer-token logprobs per sequence: [B, L, V], [B, L] -> [B]."""
    logp, _ = shifted_token_logprobs(logits, labels)
    return logp.sum(-1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """-log sigmoid(r_c - r_r [- margin]) averaged over pairs [B] -> (loss, accuracy).

    The optional margin (rating difference, Llama-2 style) asks for a wider gap on pairs whose
    answers differ more."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    loss = -F.logsigmoid(diff).mean()
    accuracy = (chosen > rejected).float().mean()
    return loss, accuracy


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, dict[str, float]]:
    """Rafailov et al. 2023. Inputs are summed answer logprobs [B]; returns (loss, stats).

    margin = beta * ((pi_c - ref_c) - (pi_r - ref_r)); loss = -log sigmoid(margin)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "dpo/margin": float(margin.mean()),
        "dpo/accuracy": float((margin > 0).float().mean()),
        "dpo/chosen_reward": float(chosen_reward.mean()),
        "dpo/rejected_reward": float(rejected_reward.mean()),
    }
    return loss, stats
