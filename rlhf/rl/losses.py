"""Policy and value losses of the learner, and logprobs/entropy from logits.

Shapes: B sequences, T response tokens, V vocabulary; mask [B, T] is 1 on valid tokens. Losses
are scalar tensors; stats are plain floats so they log and cross Ray without a device sync later.

Departures from the papers, on purpose:
  - Losses are aggregated as a token mean over every valid token of the batch (DAPO, verl's
    default), not a mean per sequence then over sequences (PPO/GRPO papers): long answers are
    not down-weighted per token. With gradient accumulation the mean is per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlhf.registry import Registry
from rlhf.rl.masked import masked_mean

if TYPE_CHECKING:
    from rlhf.config.training import AlgoConfig

PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, "AlgoConfig"], tuple[Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
"""`fn(logp, old_logp, advantages, mask [B, T] each, algo config) -> (scalar loss, stats)` by
name (`algo.policy_loss`)."""


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                  a: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """Token-level PPO clip (`policy_loss` with algo.clip_eps and algo.dual_clip)."""
    return policy_loss(logp, old_logp, advantages, mask, a.clip_eps, a.dual_clip)


@POLICY_LOSSES.register("gspo")
def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
              a: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, clipped per sequence.

    s_i = exp(mean_t (logp - old_logp)) over row i's valid tokens; the sequence advantage A_i is
    the mean of its token advantages (constant along the row for group estimators);
    loss = mean_i max(-A_i s_i, -A_i clip(s_i, 1-eps, 1+eps)) over rows with a valid token.
    [B, T] each -> (scalar loss, stats). Rows without tokens add nothing.
    """
    eps = a.clip_eps
    rows = (mask != 0).any(dim=-1).to(logp.dtype)  # [B]
    log_ratio = masked_mean(logp - old_logp, mask, dim=-1)  # [B]
    ratio = torch.exp(log_ratio)
    adv = masked_mean(advantages, mask, dim=-1)  # [B]
    loss_seq = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps, 1.0 + eps))
    loss = (loss_seq * rows).sum() / rows.sum().clamp(min=1.0)
    with torch.no_grad():
        low = ((ratio < 1.0 - eps) & (adv < 0)).to(logp.dtype)
        high = ((ratio > 1.0 + eps) & (adv > 0)).to(logp.dtype)
        n = rows.sum().clamp(min=1.0)
        stats = {
            "loss/policy": float(loss),
            "clip_ratio/low_mean": float((low * rows).sum() / n),
            "clip_ratio/high_mean": float((high * rows).sum() / n),
            "clip_ratio/region_mean": float(((low + high) * rows).sum() / n),
            "clip_ratio/dual_mean": 0.0,  # no dual clip on sequence ratios; reported like ppo_clip's
            "policy/approx_kl": float((0.5 * log_ratio**2 * rows).sum() / n),
            "policy/ratio_mean": float((ratio * rows).sum() / n),
        }
    return loss, stats



def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    dual_clip: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, token mean over `mask`. [B, T] each -> (scalar loss, stats).

    loss_t = max(-A r, -A clip(r, 1-eps, 1+eps)) with r = exp(logp - old_logp). With dual clip
    c > 1 (Ye et al. 2020) a negative-advantage token's loss is further capped at -c A, so a huge
    ratio on a bad token cannot blow up the update. Stats follow TRL's names: clip_ratio/low_mean
    (r < 1-eps with A < 0), clip_ratio/high_mean (r > 1+eps with A > 0) and their union
    clip_ratio/region_mean, all fractions of valid tokens where the clip removed the gradient.
    """
    if 0.0 < dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or 0 to disable), got {dual_clip}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss_tok = torch.maximum(unclipped, clipped)
    dual_hit = torch.zeros_like(loss_tok, dtype=torch.bool)
    if dual_clip > 0.0:
        bound = -dual_clip * advantages
        dual_hit = (advantages < 0) & (loss_tok > bound)
        loss_tok = torch.where(advantages < 0, torch.minimum(loss_tok, bound), loss_tok)
    loss = masked_mean(loss_tok, mask)

    with torch.no_grad():
        low = ((ratio < 1.0 - clip_eps) & (advantages < 0)).to(logp.dtype)
        high = ((ratio > 1.0 + clip_eps) & (advantages > 0)).to(logp.dtype)
        stats = {
            "loss/policy": float(loss),
            "clip_ratio/low_mean": float(masked_mean(low, mask)),
            "clip_ratio/high_mean": float(masked_mean(high, mask)),
            "clip_ratio/region_mean": float(masked_mean(low + high, mask)),
            "clip_ratio/dual_mean": float(masked_mean(dual_hit.to(logp.dtype), mask)),
            # 0.5 * log_ratio^2 (TRL's approxkl): >= 0 and second-order accurate.
            "policy/approx_kl": float(masked_mean(0.5 * log_ratio**2, mask)),
            "policy/ratio_mean": float(masked_mean(ratio, mask)),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss 0.5 * max((v - R)^2, (v_clip - R)^2), token mean over `mask`.

    v_clip = old_v + clamp(v - old_v, -clip, clip) keeps the critic from jumping far from the
    values the advantages were computed with. [B, T] each -> (scalar loss, stats).
    """
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "loss/value": float(loss),
            "value/clipfrac": float(masked_mean((clipped > unclipped).to(values.dtype), mask)),
            "value/mean": float(masked_mean(values, mask)),
        }
    return loss, stats


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label. logits [B, T, V], labels [B, T] long -> [B, T] float32.

    Computed in float32: bf16 log-softmax loses the precision the ratio exp(logp - old) needs.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution. logits [B, T, V] -> [B, T] float32."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def entropy_bonus(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy over valid tokens (the loss subtracts entropy_coef times this).

    logits [B, T, V], mask [B, T] -> scalar.
    """
    return masked_mean(entropy_from_logits(logits), mask)
