"""Masked reductions over [B, T] response tensors: sums, means, variance and whitening that count
only valid tokens (1 in `mask`). Padded positions never leak into a statistic.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
