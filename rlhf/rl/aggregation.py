"""Loss aggregation: how per-token policy losses of a mini-batch become the scalar that is
back-propagated, registered by name (`algo.loss_agg`).

Under gradient accumulation one optimizer step sums the gradients of several micro-batches, and
DeepSpeed divides each micro-batch's loss by the accumulation steps and averages gradients over
the data-parallel ranks. A mode is therefore a pair (`total`, `count`): each micro-batch
back-propagates `total(loss, mask) / units * accum * world`, where `units` is `count` summed over
the whole mini-batch on every rank. The sum over micro-batches and ranks is then exactly the
mode's mean over the mini-batch, whatever its split.

Modes (B rows, T response tokens, L_i valid tokens of row i, T_max the response budget):
  token_mean            sum_i sum_t loss_it / sum_i L_i (DAPO; every token weighs the same)
  seq_mean_token_mean   mean_i (sum_t loss_it / L_i) over rows with a token (GRPO paper)
  seq_mean_token_sum_norm  sum_i sum_t loss_it / (B * T_max) (Dr. GRPO: no length bias)
  micro_token_mean      token mean within each micro-batch, then averaged over micro-batches and
                        ranks; equals token_mean only when every micro-batch holds as many tokens
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rlhf.registry import Registry
from rlhf.rl.masked import masked_mean, masked_sum


@dataclass(frozen=True)
class Aggregation:
    """`total(loss [B, T], mask [B, T], t_max) -> scalar` and `count(mask [B, T]) -> float`:
    the loss of a micro-batch is total / (count over the mini-batch), scaled by accum * world to
    undo DeepSpeed. `per_micro` modes count over the micro-batch alone and are not scaled, so
    DeepSpeed's own averaging over micro-batches and ranks applies."""

    total: Callable[[Tensor, Tensor, int], Tensor]
    count: Callable[[Tensor], float]
    per_micro: bool = False


AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


def _rows(mask: Tensor) -> float:
    return float((mask != 0).any(dim=-1).sum())


AGGREGATIONS.register("token_mean")(Aggregation(
    total=lambda loss, mask, t_max: masked_sum(loss, mask), count=lambda mask: float(mask.sum())))
AGGREGATIONS.register("seq_mean_token_mean")(Aggregation(
    total=lambda loss, mask, t_max: masked_mean(loss, mask, dim=-1).sum(), count=_rows))
AGGREGATIONS.register("seq_mean_token_sum_norm")(Aggregation(
    total=lambda loss, mask, t_max: masked_sum(loss, mask) / t_max, count=lambda mask: float(mask.shape[0])))
AGGREGATIONS.register("micro_token_mean")(Aggregation(
    total=lambda loss, mask, t_max: masked_sum(loss, mask), count=lambda mask: float(mask.sum()), per_micro=True))


def aggregate(name: str, loss: Tensor, mask: Tensor, units: float, t_max: int, scale: float = 1.0) -> Tensor:
    """One micro-batch's share of the mini-batch loss: total / units * scale (scale = accum *
    world undoes DeepSpeed's division and rank averaging). units <= 0 (nothing valid) gives 0."""
    total = AGGREGATIONS[name].total(loss, mask, t_max)
    return total / units * scale if units > 0 else total * 0.0


def mini_batch_units(name: str, masks: list[Tensor]) -> float:
    """The mode's count over one rank's mini-batch, given its micro-batches' masks."""
    return sum(AGGREGATIONS[name].count(m) for m in masks)
