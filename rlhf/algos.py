"""RL math for the learner: pure tensor functions, variants registered by name.

Conventions (every function below):
  B       sequences in the batch; samples of one prompt are contiguous, `group_size` n of them
          (B % n == 0), so group g is rows [g*n, (g+1)*n).
  T       response tokens, right-padded.
  mask    [B, T] float or bool, 1 on valid response tokens.
  logp    [B, T] log-probability of each sampled response token under the current policy;
          `old_logp` under the policy that generated (or last scored) the batch; `ref_logp` under
          the frozen reference model.
Per-token tensors are [B, T]; sequence rewards are [B]. Losses are scalar tensors; stats are
plain floats so they log and cross Ray without a device sync later.

Departures from the papers, on purpose:
  - Losses are aggregated as a token mean over every valid token of the batch (DAPO, verl's
    default), not a mean per sequence then over sequences (PPO/GRPO papers): long answers are
    not down-weighted per token. With gradient accumulation the mean is per micro-batch.
  - GRPO divides by the unbiased (n-1) group standard deviation plus 1e-6, as TRL and verl do;
    a group with a single sample gets zero advantage instead of NaN.
  - k3 clamps the log-ratio to [-20, 20] before `exp`, so one token the reference finds far
    likelier cannot overflow to inf; values inside that range are exact.
  - GAE skips masked positions (carrying the next value and advantage through them) instead of
    assuming right padding, so it stays correct for masks with holes; for right-padded masks it
    equals the textbook recursion.
  - `masked_whiten` uses the unbiased variance and zeroes padded positions.
  - REINFORCE++ whitens over the whole batch (as in the paper); no per-group baseline.
  - PPO advantages from GAE are whitened over the batch (TRL, OpenRLHF); returns are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rlhf.config import AlgoConfig


# ----------------------------------------------------------------------------- masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is set. x, mask [B, T] -> scalar, or [B] / [T] along `dim`."""
    # where() rather than x * mask alone: padded logprobs may be -inf, and -inf * 0 is NaN.
    masked = torch.where(mask != 0, x * mask, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid tokens. x, mask [B, T] -> scalar, or [B] / [T] along `dim`.

    An empty mask gives 0 rather than NaN (an all-padding micro-batch should add nothing).
    """
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.to(x.dtype).clamp(min=1e-8)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all valid tokens. x, mask [B, T] -> scalar."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.sum().to(x.dtype)
        # Bessel's correction; a single valid token has no spread to correct.
        var = var * count / (count - 1) if count > 1 else var
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardise `x` over all valid tokens of the batch. x, mask [B, T] -> [B, T].

    With `shift_mean=False` the mean is added back (only the scale changes), which PPO uses for
    rewards so their sign survives. Padded positions come out as 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask != 0, whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------- KL estimators
# Schulman, "Approximating KL Divergence" (2020). All estimate KL(policy || ref) from samples of
# the policy; k1 is unbiased but noisy and can go negative, k3 is unbiased and always >= 0.


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log p - log q. [B, T] -> [B, T]."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 (log p - log q)^2 (biased, low variance). [B, T] -> [B, T]."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = q/p - log(q/p) - 1, with q/p = exp(ref - logp). [B, T] -> [B, T]."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)  # see module docstring
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate by name (`k1`, `k2`, `k3`). [B, T] -> [B, T]."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator '{kind}'; valid: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """KL penalty as a loss term (GRPO style): token mean of the estimate. [B, T] -> scalar.

    Gradients flow through `logp` only; `ref_logp` is expected to be detached already.
    """
    return masked_mean(kl_estimate(logp, ref_logp, kind), mask)


# ----------------------------------------------------------------------------- token rewards


def _last_token_index(mask: Tensor) -> Tensor:
    """Column of each row's last valid token. mask [B, T] -> [B] long (0 for empty rows)."""
    T = mask.shape[-1]
    positions = torch.arange(1, T + 1, device=mask.device)
    # The largest (position * valid) is the last valid column, whatever the padding side.
    return ((mask != 0).long() * positions).argmax(dim=-1)


def sequence_to_token_rewards(seq_rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence reward on its row's last valid token. [B], [B, T] -> [B, T].

    Rows with no valid token get no reward (their whole row is 0).
    """
    if not seq_rewards.is_floating_point():
        seq_rewards = seq_rewards.float()
    token_rewards = torch.zeros(mask.shape, dtype=seq_rewards.dtype, device=seq_rewards.device)
    has_tokens = (mask != 0).any(dim=-1)
    values = torch.where(has_tokens, seq_rewards, torch.zeros_like(seq_rewards))
    token_rewards.scatter_(1, _last_token_index(mask).unsqueeze(1), values.unsqueeze(1))
    return token_rewards


def kl_penalised_token_rewards(
    seq_rewards: Tensor, kl: Tensor, kl_coef: float, mask: Tensor
) -> Tensor:
    """KL-in-reward (Ziegler et al. 2019): r_t = -coef * kl_t, plus the sequence reward on the
    last token. seq_rewards [B], kl [B, T] (per-token estimate) -> [B, T], 0 on padding."""
    penalty = torch.where(mask != 0, kl_coef * kl, torch.zeros_like(kl))
    return sequence_to_token_rewards(seq_rewards, mask) - penalty


# ----------------------------------------------------------------------------- advantages


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), vectorised over B.

    token_rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T]) with
    returns = advantages + values. The value after the last valid token is 0 (the episode
    ends there). Masked positions are skipped; outputs are 0 there.
    """
    valid = (mask != 0).to(values.dtype)
    values = values * valid
    rewards = token_rewards * valid
    B, T = values.shape
    next_value = values.new_zeros(B)
    next_adv = values.new_zeros(B)
    advantages = torch.zeros_like(values)
    for t in reversed(range(T)):  # a scan over T; each step is vectorised over B
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        m = valid[:, t]
        # On a masked position keep the carry from the right so the gap is invisible.
        next_adv = m * adv_t + (1 - m) * next_adv
        next_value = m * values[:, t] + (1 - m) * next_value
        advantages[:, t] = adv_t * m
    returns = (advantages + values) * valid
    return advantages, returns


def gae_loop(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Reference GAE in plain Python, one row and one valid token at a time (for tests).

    Same shapes and semantics as `gae`.
    """
    advantages = torch.zeros_like(values)
    returns = torch.zeros_like(values)
    for b in range(values.shape[0]):
        cols = [t for t in range(values.shape[1]) if float(mask[b, t]) != 0]
        running, next_value = 0.0, 0.0
        for t in reversed(cols):
            v = float(values[b, t])
            delta = float(token_rewards[b, t]) + gamma * next_value - v
            running = delta + gamma * lam * running
            advantages[b, t] = running
            returns[b, t] = running + v
            next_value = v
    return advantages, returns


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """[B] -> [B / n, n], checking the batch is whole groups."""
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"batch of {rewards.shape[0]} is not whole groups of {group_size}")
    return rewards.view(-1, group_size)


def grpo_advantages(
    rewards: Tensor, mask: Tensor, group_size: int, scale_rewards: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO (Shao et al. 2024): (r - group mean) / (group std + eps), the same on every token.

    rewards [B], mask [B, T] -> advantages [B, T] (0 on padding). A group whose rewards are all
    equal carries no signal and gets 0.
    """
    groups = _grouped(rewards, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale_rewards:
        std = groups.std(dim=1, keepdim=True, unbiased=group_size > 1)
        centred = centred / (std + eps)
    return centred.reshape(-1, 1) * (mask != 0).to(rewards.dtype)


def rloo_advantages(rewards: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): r_i - mean of the other n-1 rewards of its group.

    rewards [B], mask [B, T] -> advantages [B, T] (0 on padding). Needs n >= 2.
    """
    if group_size < 2:
        raise ValueError("rloo needs at least 2 samples per prompt for a leave-one-out baseline")
    groups = _grouped(rewards, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1, 1) * (mask != 0).to(rewards.dtype)


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Returns-to-go G_t = r_t + gamma * G_{t+1} over valid tokens. [B, T] -> [B, T]."""
    return gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)[1]


def reinforce_pp_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): discounted returns-to-go, whitened over the whole batch.

    token_rewards [B, T] (sequence reward on the last token, minus coef * kl per token when the
    KL is in the reward) -> (advantages [B, T], returns [B, T]).
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask), returns


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an advantage estimator may read; each uses what it needs."""

    seq_rewards: Tensor  # [B] one scalar reward per sequence
    token_rewards: Tensor  # [B, T] per-token rewards (sequence reward on the last token)
    mask: Tensor  # [B, T] valid response tokens
    values: Tensor | None  # [B, T] critic values (ppo only)
    group_size: int  # samples per prompt, contiguous in the batch
    gamma: float
    lam: float
    scale_rewards: bool


AdvantageFn = Callable[[AdvantageInputs], tuple[Tensor, Tensor]]
ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register `fn(inputs: AdvantageInputs) -> (advantages [B, T], returns [B, T])` by name."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator '{name}' is already registered")
        ADVANTAGES[name] = fn
        return fn

    return wrap


@register_advantage("ppo")
def _ppo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    if x.values is None:
        raise ValueError("ppo (GAE) needs critic values")
    adv, returns = gae(x.token_rewards, x.values, x.mask, x.gamma, x.lam)
    # Whitened over the batch as in TRL/OpenRLHF PPO: keeps the step size independent of the
    # reward scale; the value targets (returns) stay unwhitened.
    return masked_whiten(adv, x.mask), returns


@register_advantage("grpo")
def _grpo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    adv = grpo_advantages(x.seq_rewards, x.mask, x.group_size, x.scale_rewards)
    return adv, adv  # no critic: the "return" regressed onto is the advantage itself


@register_advantage("rloo")
def _rloo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    adv = rloo_advantages(x.seq_rewards, x.mask, x.group_size)
    return adv, adv


@register_advantage("reinforce_pp")
def _reinforce_pp(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    return reinforce_pp_advantages(x.token_rewards, x.mask, x.gamma)


def compute_advantages(
    name: str,
    *,
    mask: Tensor,
    rewards: Tensor | None = None,
    token_rewards: Tensor | None = None,
    values: Tensor | None = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_rewards: bool = True,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns by estimator name: ppo, grpo, rloo, reinforce_pp, or registered.

    Give sequence `rewards` [B] or per-token `token_rewards` [B, T] (give token rewards to put
    the KL in the reward). Whichever is missing is derived: sequence rewards become a reward on
    the last token; token rewards sum to the sequence reward. Returns two [B, T] tensors.
    """
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator '{name}'; valid: {', '.join(ADVANTAGES)}")
    if (rewards is None) == (token_rewards is None):
        raise ValueError("give exactly one of rewards [B] or token_rewards [B, T]")
    if token_rewards is None:
        token_rewards = sequence_to_token_rewards(rewards, mask)
    else:
        rewards = masked_sum(token_rewards, mask, dim=-1)
    inputs = AdvantageInputs(
        seq_rewards=rewards,
        token_rewards=token_rewards,
        mask=mask,
        values=values,
        group_size=group_size,
        gamma=gamma,
        lam=lam,
        scale_rewards=scale_rewards,
    )
    with torch.no_grad():  # advantages are targets, never differentiated through
        return ADVANTAGES[name](inputs)


# ----------------------------------------------------------------------------- losses


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


# ----------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; present so both controllers share one interface."""


class AdaptiveKLController:
    """Ziegler et al. 2019: steer the observed KL towards `target`.

    err = clip(kl / target - 1, -0.2, 0.2); coef *= 1 + err * n_steps / horizon. The clip keeps
    one noisy batch from moving the coefficient much.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """`current_kl`: mean KL of the last batch; `n_steps`: samples (or steps) it covered."""
        if not math.isfinite(current_kl):
            return  # a NaN here would poison the coefficient for the rest of the run
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(cfg: AlgoConfig) -> FixedKLController | AdaptiveKLController:
    """Adaptive when `algo.kl_target` > 0, otherwise fixed at `algo.kl_coef`."""
    if cfg.kl_target > 0:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)
