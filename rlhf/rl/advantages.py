"""Advantage estimators, registered by name: pure tensor functions over one step's batch.

Conventions:
  B       sequences in the batch; samples of one prompt are contiguous, `group_size` n of them
          (B % n == 0), so group g is rows [g*n, (g+1)*n).
  T       response tokens, right-padded.
  mask    [B, T] float or bool, 1 on valid response tokens.
Per-token tensors are [B, T]; sequence rewards are [B].

Departures from the papers, on purpose:
  - GRPO divides by the unbiased (n-1) group standard deviation plus 1e-6, as TRL and verl do;
    a group with a single sample gets zero advantage instead of NaN.
  - GAE skips masked positions (carrying the next value and advantage through them) instead of
    assuming right padding, so it stays correct for masks with holes; for right-padded masks it
    equals the textbook recursion.
  - REINFORCE++ whitens over the whole batch (as in the paper); no per-group baseline.
  - PPO advantages from GAE are whitened over the batch (TRL, OpenRLHF); returns are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf.registry import Registry
from rlhf.rl.masked import masked_sum, masked_whiten

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


@dataclass(frozen=True)
class Estimator:
    fn: AdvantageFn  # inputs -> (advantages [B, T], returns [B, T])
    min_group_size: int = 1  # samples per prompt it compares (checked when the config loads)
    needs_critic: bool = False  # reads critic values: the learner trains a value model beside the policy


ADVANTAGES: Registry[Estimator] = Registry("advantage estimator")
"""Advantage estimators by name (`algo.name`)."""


def estimator(name: str, min_group_size: int = 1, needs_critic: bool = False) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register the decorated `fn(inputs: AdvantageInputs) -> (advantages, returns)` as `name`."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES.register(name)(Estimator(fn, min_group_size, needs_critic))
        return fn

    return wrap


@estimator("ppo", needs_critic=True)
def _ppo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    if x.values is None:
        raise ValueError("ppo (GAE) needs critic values")
    adv, returns = gae(x.token_rewards, x.values, x.mask, x.gamma, x.lam)
    # Whitened over the batch as in TRL/OpenRLHF PPO: keeps the step size independent of the
    # reward scale; the value targets (returns) stay unwhitened.
    return masked_whiten(adv, x.mask), returns


@estimator("grpo", min_group_size=2)
def _grpo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    adv = grpo_advantages(x.seq_rewards, x.mask, x.group_size, x.scale_rewards)
    return adv, adv  # no critic: the "return" regressed onto is the advantage itself


@estimator("rloo", min_group_size=2)
def _rloo(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    adv = rloo_advantages(x.seq_rewards, x.mask, x.group_size)
    return adv, adv


@estimator("reinforce_pp")
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
    chosen = ADVANTAGES[name]  # an unknown name raises, listing the registered ones
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
        return chosen.fn(inputs)
