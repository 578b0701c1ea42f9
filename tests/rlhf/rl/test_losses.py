"""Policy losses registered by name, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config.training import AlgoConfig
from rlhf.rl.losses import POLICY_LOSSES, gspo_loss, policy_loss, truncated_is_weights

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def test_ppo_clip_is_the_token_level_policy_loss():
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.2, -1.5]])
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    got, _ = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, AlgoConfig(clip_eps=0.2))
    want, _ = policy_loss(logp, old, adv, mask, 0.2)
    assert got.shape == (1, 2) and torch.equal(got.mean(), want)


def test_clip_higher_widens_only_the_upper_side():
    # ratios e^0.24 = 1.271 (A > 0) and e^-0.24 = 0.787 (A < 0); eps 0.2 below, 0.28 above
    logp, old = torch.tensor([[0.24, -0.24]]), torch.zeros(1, 2)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    loss_tok, stats = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, AlgoConfig(clip_eps=0.2, clip_eps_high=0.28))
    assert float(loss_tok[0, 0]) == pytest.approx(-math.exp(0.24))  # inside [0.8, 1.28]: unclipped
    assert float(loss_tok[0, 1]) == pytest.approx(0.8)  # max(0.787, 0.8): clipped below at 1 - 0.2
    assert stats["clip_ratio/high_mean"] == 0.0 and stats["clip_ratio/low_mean"] == 0.5
    symmetric, stats = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, AlgoConfig(clip_eps=0.2))
    assert float(symmetric[0, 0]) == pytest.approx(-1.2) and stats["clip_ratio/high_mean"] == 0.5


def test_gspo_one_ratio_per_sequence_by_hand():
    # row 0: token log-ratios 0.1 and 0.3 -> mean 0.2, s = e^0.2 = 1.2214 (> 1.2: clipped, A > 0)
    # row 1: one valid token, log-ratio -0.05 -> s = 0.9512 (inside the clip), A = -2
    logp = torch.tensor([[0.1, 0.3], [-0.05, 9.0]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = gspo_loss(logp, old, adv, mask, AlgoConfig(clip_eps=0.2))
    s1 = math.exp(-0.05)
    row0 = max(-1.0 * math.exp(0.2), -1.0 * 1.2)  # = -1.2
    row1 = max(2.0 * s1, 2.0 * s1)
    assert float(loss) == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert stats["clip_ratio/high_mean"] == pytest.approx(0.5) and stats["clip_ratio/low_mean"] == 0.0
    assert stats["policy/ratio_mean"] == pytest.approx((math.exp(0.2) + s1) / 2, abs=1e-6)


def test_gspo_gradient_flows_through_the_unclipped_sequence_only():
    logp = torch.tensor([[0.1, 0.3], [-0.05, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = gspo_loss(logp, torch.zeros(2, 2), adv, mask, AlgoConfig(clip_eps=0.2))
    loss.backward()
    # row 0 is clipped: no gradient; row 1: d/dlogp (2 * exp(logp)) / 2 rows = exp(-0.05)
    assert logp.grad[0].abs().max() == 0
    assert float(logp.grad[1, 0]) == pytest.approx(math.exp(-0.05), abs=1e-6) and logp.grad[1, 1] == 0


def test_rows_without_tokens_add_nothing():
    loss, _ = gspo_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([[1.0, 1.0], [0, 0]]),
                        AlgoConfig())
    assert float(loss) == pytest.approx(-1.0)


def test_truncated_importance_weights_by_hand():
    # learner/engine ratios e^0.5 = 1.65, e^-0.5 = 0.61, e^1.5 = 4.48 (capped at 2); last token padding
    old, rollout = torch.tensor([[0.0, -1.0, 0.5, 9.0]]), torch.tensor([[-0.5, -0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, stats = truncated_is_weights(old, rollout, mask, cap=2.0)
    assert weights[0, :3].tolist() == pytest.approx([math.exp(0.5), math.exp(-0.5), 2.0], abs=1e-6)
    assert stats["rollout/tis_weight_mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.5) + 2) / 3, abs=1e-6)
    assert stats["rollout/tis_capped_frac"] == pytest.approx(1 / 3)
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(old, rollout, mask, cap=0.0)
