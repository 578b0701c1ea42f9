"""Loss aggregation modes, by hand, and their independence from the micro-batch split."""

from __future__ import annotations

import pytest
import torch

from rlhf.rl.aggregation import AGGREGATIONS, aggregate, mini_batch_units

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

# Two rows: row 0 has 3 valid tokens with losses 1, 2, 3; row 1 one valid token with loss 8.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [8.0, 5.0, 5.0, 5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
T_MAX = 4


@pytest.mark.parametrize("name, want", [
    ("token_mean", (1 + 2 + 3 + 8) / 4),
    ("seq_mean_token_mean", ((1 + 2 + 3) / 3 + 8) / 2),
    ("seq_mean_token_sum_norm", (1 + 2 + 3 + 8) / (2 * 4)),  # Dr. GRPO: B * T_max
    ("micro_token_mean", (1 + 2 + 3 + 8) / 4),
])
def test_each_mode_by_hand(name, want):
    units = mini_batch_units(name, [MASK])
    assert float(aggregate(name, LOSS, MASK, units, T_MAX)) == pytest.approx(want)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_the_mini_batch_loss_does_not_depend_on_the_micro_batch_split(name):
    # One row per micro-batch, accumulated as DeepSpeed does (each micro loss / accum steps).
    whole = aggregate(name, LOSS, MASK, mini_batch_units(name, [MASK]), T_MAX)
    micros = [(LOSS[i:i + 1], MASK[i:i + 1]) for i in range(2)]
    units = mini_batch_units(name, [m for _, m in micros])
    accumulated = sum(aggregate(name, lo, m, units, T_MAX, scale=2) / 2 for lo, m in micros)
    assert float(accumulated) == pytest.approx(float(whole))


def test_the_per_micro_mean_is_not_the_global_token_mean():
    # Row 0's micro mean is 2 and row 1's is 8: averaged 5, while the token mean is 3.5.
    per_micro = sum(aggregate("micro_token_mean", LOSS[i:i + 1], MASK[i:i + 1],
                              AGGREGATIONS["micro_token_mean"].count(MASK[i:i + 1]), T_MAX) / 2 for i in range(2))
    assert float(per_micro) == pytest.approx(5.0)
    assert float(aggregate("token_mean", LOSS, MASK, 4, T_MAX)) == pytest.approx(3.5)


def test_gradients_weigh_tokens_as_the_mode_says():
    loss = LOSS.clone().requires_grad_(True)
    aggregate("seq_mean_token_mean", loss, MASK, mini_batch_units("seq_mean_token_mean", [MASK]), T_MAX).backward()
    # each of row 0's tokens weighs 1 / (3 * 2), row 1's one token 1 / 2; padding nothing
    assert torch.allclose(loss.grad, torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0.0], [0.5, 0.0, 0.0, 0.0]]))


def test_nothing_valid_gives_zero_and_an_unknown_mode_is_named():
    assert float(aggregate("token_mean", LOSS, torch.zeros_like(MASK), 0.0, T_MAX)) == 0.0
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'; valid: token_mean"):
        aggregate("sum", LOSS, MASK, 1.0, T_MAX)
