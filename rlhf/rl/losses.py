"""Policy and value losses of the learner, and logprobs/entropy from logits.

Shapes: B sequences, T response tokens, V vocabulary; mask [B, T] is 1 on valid tokens. Losses
are scalar tensors; stats are plain floats so they log and cross Ray without a device sync later.

Departures from the papers, on purpose:
  - Policy losses are per token; how they become one scalar over the mini-batch (token mean,
    sequence mean, Dr. GRPO's constant normaliser) is `algo.loss_agg` (rlhf/rl/aggregation.py).
  - The clip range may be asymmetric ("clip-higher", DAPO): ratios are clipped to
    [1 - clip_eps, 1 + clip_eps_high], which lets rare good tokens grow faster than they shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlhf.registry import Registry
from rlhf.rl.aggregation import AGGREGATIONS, aggregate
from rlhf.rl.masked import masked_mean

if TYPE_CHECKING:
    from rlhf.config.training import AlgoConfig

PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, "AlgoConfig"], tuple[Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
"""`fn(logp, old_logp, advantages, mask [B, T] each, algo config) -> (loss [B, T], stats)` by
name (`algo.policy_loss`); `algo.loss_agg` turns the per-token loss into the scalar."""


def clip_range(a: AlgoConfig) -> tuple[float, float]:
    """(eps_low, eps_high) of the ratio clip: clip_eps below, clip_eps_high (or clip_eps) above."""
    return a.clip_eps, a.clip_eps_high or a.clip_eps


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                  a: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """Token-level PPO clip (`policy_loss_terms` with algo's clip range and dual clip)."""
    low, high = clip_range(a)
    return policy_loss_terms(logp, old_logp, advantages, mask, low, a.dual_clip, high)


@POLICY_LOSSES.register("gspo")
def gspo_terms(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
               a: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, clipped per sequence.

    s_i = exp(mean_t (logp - old_logp)) over row i's valid tokens; the sequence advantage A_i is
    the mean of its token advantages (constant along the row for group estimators);
    loss_i = max(-A_i s_i, -A_i clip(s_i, 1-eps_low, 1+eps_high)), put on each valid token of
    row i ([B, T] each -> ([B, T], stats)); seq_mean_token_mean aggregation gives the paper's
    mean over sequences.
    """
    eps_low, eps_high = clip_range(a)
    rows = (mask != 0).any(dim=-1).to(logp.dtype)  # [B]
    log_ratio = masked_mean(logp - old_logp, mask, dim=-1)  # [B]
    ratio = torch.exp(log_ratio)
    adv = masked_mean(advantages, mask, dim=-1)  # [B]
    loss_seq = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    loss_tok = loss_seq.unsqueeze(-1).expand_as(logp) * (mask != 0)
    with torch.no_grad():
        loss = (loss_seq * rows).sum() / rows.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(logp.dtype)
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(logp.dtype)
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
    return loss_tok, stats


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
              a: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """GSPO as the paper states it: the mean of the sequence losses over rows with a valid token
    (`gspo_terms` aggregated by seq_mean_token_mean). [B, T] each -> (scalar loss, stats)."""
    loss_tok, stats = gspo_terms(logp, old_logp, advantages, mask, a)
    rows = AGGREGATIONS["seq_mean_token_mean"].count(mask)
    return aggregate("seq_mean_token_mean", loss_tok, mask, rows, logp.shape[-1]), stats


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2,
                dual_clip: float = 0.0, clip_eps_high: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, token mean over `mask`. [B, T] each -> (scalar loss, stats)."""
    loss_tok, stats = policy_loss_terms(logp, old_logp, advantages, mask, clip_eps, dual_clip, clip_eps_high)
    return masked_mean(loss_tok, mask), stats


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    dual_clip: float = 0.0,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate per token. [B, T] each -> (loss [B, T], stats over `mask`).

    loss_t = max(-A r, -A clip(r, 1-eps, 1+eps_high)) with r = exp(logp - old_logp) and eps_high
    = clip_eps unless given (clip-higher). With dual clip
    c > 1 (Ye et al. 2020) a negative-advantage token's loss is further capped at -c A, so a huge
    ratio on a bad token cannot blow up the update. Stats follow TRL's names: clip_ratio/low_mean
    (r < 1-eps with A < 0), clip_ratio/high_mean (r > 1+eps with A > 0) and their union
    clip_ratio/region_mean, all fractions of valid tokens where the clip removed the gradient.
    """
    if 0.0 < dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or 0 to disable), got {dual_clip}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss_tok = torch.maximum(unclipped, clipped)
    dual_hit = torch.zeros_like(loss_tok, dtype=torch.bool)
    if dual_clip > 0.0:
        bound = -dual_clip * advantages
        dual_hit = (advantages < 0) & (loss_tok > bound)
        loss_tok = torch.where(advantages < 0, torch.minimum(loss_tok, bound), loss_tok)
    with torch.no_grad():
        low = ((ratio < 1.0 - clip_eps) & (advantages < 0)).to(logp.dtype)
        high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(logp.dtype)
        stats = {
            "loss/policy": float(masked_mean(loss_tok, mask)),
            "clip_ratio/low_mean": float(masked_mean(low, mask)),
            "clip_ratio/high_mean": float(masked_mean(high, mask)),
            "clip_ratio/region_mean": float(masked_mean(low + high, mask)),
            "clip_ratio/dual_mean": float(masked_mean(dual_hit.to(logp.dtype), mask)),
            # 0.5 * log_ratio^2 (TRL's approxkl): >= 0 and second-order accurate.
            "policy/approx_kl": float(masked_mean(0.5 * log_ratio**2, mask)),
            "policy/ratio_mean": float(masked_mean(ratio, mask)),
        }
    return loss_tok, stats


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor,
                         cap: float) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS, Yao et al. 2025) for the gap between the engine that
    sampled and the learner: w_t = min(exp(old_logp - rollout_logp), cap), no gradient.

    The policy loss is multiplied by w per token, so tokens the engine over-sampled relative to
    the learner's policy count for less. [B, T] each -> (w [B, T], stats over `mask`).
    """
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    with torch.no_grad():
        ratio = torch.exp(old_logp - rollout_logp)
        weights = ratio.clamp(max=cap)
        stats = {"rollout/tis_weight_mean": float(masked_mean(weights, mask)),
                 "rollout/tis_capped_frac": float(masked_mean((ratio > cap).to(weights.dtype), mask))}
    return weights, stats


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
