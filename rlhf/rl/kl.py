"""KL estimators (registered by name) and the KL coefficient controllers.

Schulman, "Approximating KL Divergence" (2020). All estimate KL(policy || ref) from samples of the
policy; k1 is unbiased but noisy and can go negative, k3 is unbiased and always >= 0. Shapes:
logp, ref_logp, mask [B, T].

Departures from the papers, on purpose:
  - k3 clamps the log-ratio to [-20, 20] before `exp`, so one token the reference finds far
    likelier cannot overflow to inf; values inside that range are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rlhf.config.training import AlgoConfig
from rlhf.registry import Registry
from rlhf.rl.masked import masked_mean

KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")
"""`fn(logp [B, T], ref_logp [B, T]) -> per-token estimate [B, T]` by name (`algo.kl_estimator`)."""


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log p - log q. [B, T] -> [B, T]."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 (log p - log q)^2 (biased, low variance). [B, T] -> [B, T]."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = q/p - log(q/p) - 1, with q/p = exp(ref - logp). [B, T] -> [B, T]."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)  # see module docstring
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate by name (`k1`, `k2`, `k3`). [B, T] -> [B, T]."""
    return KL_ESTIMATORS[kind](logp, ref_logp)


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """KL penalty as a loss term (GRPO style): token mean of the estimate. [B, T] -> scalar.

    Gradients flow through `logp` only; `ref_logp` is expected to be detached already.
    """
    return masked_mean(kl_estimate(logp, ref_logp, kind), mask)


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
