"""RL math against hand-computed values, and the vectorised GAE against a plain loop."""

import math

import pytest
import torch

from rlhf.config.training import AlgoConfig
from rlhf.rl.advantages import (
    ADVANTAGES,
    compute_advantages,
    gae,
    gae_loop,
    grpo_advantages,
    kl_penalised_token_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_to_token_rewards,
)
from rlhf.rl.batch import (
    Experience,
    Rollout,
    pack,
    pack_sequences,
    pad_float_lists,
    position_ids_from_mask,
    response_logits_slice,
    unpack,
)
from rlhf.rl.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate, kl_loss, make_kl_controller
from rlhf.rl.losses import entropy_bonus, entropy_from_logits, logprobs_from_logits, policy_loss, value_loss
from rlhf.rl.masked import masked_mean, masked_whiten

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

approx = pytest.approx


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- reductions


def test_masked_mean_ignores_padding_even_when_it_is_inf():
    x = t([1.0, 2.0, float("-inf")], [3.0, float("nan"), 0.0])
    mask = t([1, 1, 0], [1, 0, 0])
    assert float(masked_mean(x, mask)) == approx(2.0)
    assert masked_mean(x, mask, dim=-1).tolist() == approx([1.5, 3.0])
    assert float(masked_mean(x, torch.zeros_like(mask))) == 0.0


def test_masked_whiten_has_zero_mean_unit_variance_on_valid_tokens():
    x = t([1.0, 2.0, 9.0], [3.0, 4.0, 9.0])
    mask = t([1, 1, 0], [1, 1, 0])
    w = masked_whiten(x, mask)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - 2.5) / vals.std()  # unbiased std
    assert w[mask.bool()].tolist() == approx(expected.tolist(), abs=1e-5)
    assert w[:, 2].tolist() == [0.0, 0.0]
    kept = masked_whiten(x, mask, shift_mean=False)
    assert float(masked_mean(kept, mask)) == approx(2.5)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp, ref = t([-1.0]), t([-2.0])  # log p - log q = 1
    assert float(kl_estimate(logp, ref, "k1")) == approx(1.0)
    assert float(kl_estimate(logp, ref, "k2")) == approx(0.5)
    # k3 = exp(-1) - (-1) - 1 = exp(-1)
    assert float(kl_estimate(logp, ref, "k3")) == approx(math.exp(-1.0))
    # equal distributions: every estimator is exactly 0
    for kind in KL_ESTIMATORS:
        assert float(kl_estimate(ref, ref, kind)) == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_kl_loss_is_token_mean_and_k3_never_overflows():
    logp = t([-1.0, -1.0, 0.0])
    ref = t([-2.0, -1.0, 0.0])
    mask = t([1, 1, 0])
    assert float(kl_loss(logp, ref, mask, "k1")) == approx(0.5)
    huge = kl_estimate(t([-200.0]), t([0.0]), "k3")
    assert torch.isfinite(huge).all()


# ----------------------------------------------------------------------------- token rewards


def test_sequence_to_token_rewards_puts_reward_on_last_valid_token():
    mask = t([1, 1, 1], [1, 0, 0], [0, 0, 0])
    out = sequence_to_token_rewards(torch.tensor([2.0, 3.0, 4.0]), mask)
    assert out.tolist() == [[0, 0, 2.0], [3.0, 0, 0], [0, 0, 0]]


def test_kl_penalised_token_rewards():
    mask = t([1, 1, 0])
    kl = t([0.5, 1.0, 7.0])
    out = kl_penalised_token_rewards(torch.tensor([1.0]), kl, 0.1, mask)
    assert out.tolist()[0] == approx([-0.05, 1.0 - 0.1, 0.0])


# ----------------------------------------------------------------------------- advantages


def test_grpo_by_hand_and_zero_std_group():
    rewards = torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2])
    mask = torch.ones(8, 3)
    mask[0, 2] = 0
    adv = grpo_advantages(rewards, mask, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(1/3): +-0.5 * sqrt(3) = +-0.8660
    h = 0.5 * math.sqrt(3.0)
    assert adv[:4, 0].tolist() == approx([h, -h, -h, h], abs=1e-5)
    assert adv[4:].abs().max() == 0.0  # all-equal group carries no signal
    assert adv[0].tolist() == approx([h, h, 0.0], abs=1e-5)  # padding stays 0
    unscaled = grpo_advantages(rewards, mask, group_size=4, scale_rewards=False)
    assert unscaled[:4, 1].tolist() == approx([0.5, -0.5, -0.5, 0.5])


def test_grpo_rejects_partial_groups():
    with pytest.raises(ValueError, match="whole groups"):
        grpo_advantages(torch.zeros(6), torch.ones(6, 2), group_size=4)


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0, 0, 1, 3, 1])
    adv = rloo_advantages(rewards, torch.ones(6, 2), group_size=3)
    # group [1, 0, 0]: 1 - 0 = 1, 0 - 0.5, 0 - 0.5; group [1, 3, 1]: 1 - 2, 3 - 1, 1 - 2
    assert adv[:, 0].tolist() == approx([1.0, -0.5, -0.5, -1.0, 2.0, -1.0])
    with pytest.raises(ValueError):
        rloo_advantages(rewards, torch.ones(6, 2), group_size=1)


def test_reinforce_pp_returns_by_hand():
    # seq reward 1 on the last of 3 tokens, KL 0.1 per token at coef 1, gamma 0.5
    mask = t([1, 1, 1], [1, 1, 0])
    kl = torch.full((2, 3), 0.1)
    token_rewards = kl_penalised_token_rewards(torch.tensor([1.0, 0.0]), kl, 1.0, mask)
    adv, ret = reinforce_pp_advantages(token_rewards, mask, gamma=0.5)
    # row 0: G2 = 0.9, G1 = -0.1 + 0.45 = 0.35, G0 = -0.1 + 0.175 = 0.075
    # row 1: rewards [-0.1, -0.1 + 0], G1 = -0.1, G0 = -0.1 - 0.05 = -0.15
    assert ret.flatten().tolist() == approx([0.075, 0.35, 0.9, -0.15, -0.1, 0.0], abs=1e-6)
    vals = torch.tensor([0.075, 0.35, 0.9, -0.15, -0.1])
    whitened = (vals - vals.mean()) / vals.std()
    assert adv[mask.bool()].tolist() == approx(whitened.tolist(), abs=1e-4)
    assert adv[1, 2] == 0.0


def test_gae_three_tokens_by_hand():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # d2 = 1 - 0.7 = 0.3; d1 = 0.7 - 0.6 = 0.1; d0 = 0.6 - 0.5 = 0.1
    # A2 = 0.3; A1 = 0.1 + 0.5 * 0.3 = 0.25; A0 = 0.1 + 0.5 * 0.25 = 0.225
    assert adv.tolist()[0] == approx([0.225, 0.25, 0.3])
    assert ret.tolist()[0] == approx([0.725, 0.85, 1.0])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_vectorised_matches_loop_on_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    lengths = torch.tensor([9, 1, 5, 0, 7, 3])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    mask[0, 4] = 0  # a hole in the middle of a row (e.g. a masked tool output)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)
    assert adv[~mask.bool()].abs().max() == 0.0


def test_compute_advantages_dispatch():
    mask = torch.ones(4, 2)
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    adv, ret = compute_advantages("grpo", rewards=rewards, mask=mask, group_size=2)
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5): +-0.5 / sqrt(0.5) = +-0.7071
    h = 0.5 / math.sqrt(0.5)
    assert adv[:, 0].tolist() == approx([h, -h, 0, 0], abs=1e-5)
    # token rewards summing to the same sequence rewards give the same GRPO advantages
    tok = sequence_to_token_rewards(rewards, mask)
    adv2, _ = compute_advantages("grpo", token_rewards=tok, mask=mask, group_size=2)
    torch.testing.assert_close(adv, adv2)
    zeros = torch.zeros(4, 2)
    _, ret_p = compute_advantages("ppo", rewards=rewards, values=zeros, mask=mask, lam=1.0)
    assert ret_p[:, 0].tolist() == approx(rewards.tolist())
    assert set(ADVANTAGES) >= {"ppo", "grpo", "rloo", "reinforce_pp"}
    with pytest.raises(ValueError, match="valid: "):
        compute_advantages("a2c", rewards=rewards, mask=mask)
    with pytest.raises(ValueError, match="critic values"):
        compute_advantages("ppo", rewards=rewards, mask=mask)


# ----------------------------------------------------------------------------- losses


def test_policy_loss_clip_by_hand():
    ratios = torch.tensor([[1.0, 1.5, 0.5, 1.1]])
    adv = t([1.0, 1.0, -1.0, -1.0])
    old = torch.zeros(1, 4)
    logp = torch.log(ratios).requires_grad_()
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    # per token: -1 (inside); max(-1.5, -1.2) = -1.2 (high clip);
    # max(0.5, 0.8) = 0.8 (low clip); 1.1 (A < 0 and ratio above the range: not clipped)
    assert float(loss.detach()) == approx((-1.0 - 1.2 + 0.8 + 1.1) / 4)
    assert stats["clip_ratio/high_mean"] == approx(0.25)
    assert stats["clip_ratio/low_mean"] == approx(0.25)
    assert stats["clip_ratio/region_mean"] == approx(0.5)
    assert stats["policy/approx_kl"] == approx(float((0.5 * torch.log(ratios) ** 2).mean()))
    loss.backward()
    # clipped tokens pass no gradient; unclipped ones get -A * ratio / N
    assert logp.grad.tolist()[0] == approx([-0.25, 0.0, 0.0, 1.1 / 4])


def test_policy_loss_masks_tokens():
    logp = torch.log(torch.tensor([[1.0, 3.0]]))
    loss, stats = policy_loss(logp, torch.zeros(1, 2), t([1.0, 1.0]), t([1, 0]))
    assert float(loss) == approx(-1.0)
    assert stats["clip_ratio/high_mean"] == 0.0


def test_dual_clip_bounds_negative_advantage_loss():
    ratios = torch.tensor([[5.0, 2.0, 5.0]])
    adv = t([-1.0, -1.0, 1.0])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(torch.log(ratios), torch.zeros(1, 3), adv, mask, 0.2, dual_clip=3.0)
    # A < 0, ratio 5: min(max(5, 1.2), 3) = 3; A < 0, ratio 2: min(2, 3) = 2;
    # A > 0, ratio 5: max(-5, -1.2) = -1.2 (dual clip leaves positive advantages alone)
    assert float(loss) == approx((3.0 + 2.0 - 1.2) / 3)
    assert stats["clip_ratio/dual_mean"] == approx(1 / 3)
    plain, _ = policy_loss(torch.log(ratios), torch.zeros(1, 3), adv, mask, 0.2)
    assert float(plain) == approx((5.0 + 2.0 - 1.2) / 3)
    with pytest.raises(ValueError, match="> 1"):
        policy_loss(torch.log(ratios), torch.zeros(1, 3), adv, mask, 0.2, dual_clip=0.5)


def test_value_loss_clipped_vs_unclipped_by_hand():
    values = t([1.0, 1.5])
    old = t([0.9, 1.0])
    returns = t([1.5, 2.0])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: inside the clip, (1 - 1.5)^2 = 0.25
    # token 1: v_clip = 1.2; max((1.5 - 2)^2, (1.2 - 2)^2) = max(0.25, 0.64) = 0.64
    assert float(loss) == approx(0.5 * (0.25 + 0.64) / 2)
    assert stats["value/clipfrac"] == approx(0.5)
    unclipped, _ = value_loss(values, old, returns, torch.ones(1, 2), clip=10.0)
    assert float(unclipped) == approx(0.5 * (0.25 + 0.25) / 2)


def test_entropy_of_uniform_is_log_v():
    V = 7
    logits = torch.zeros(2, 3, V)
    ent = entropy_from_logits(logits)
    assert ent.shape == (2, 3)
    assert ent.flatten().tolist() == approx([math.log(V)] * 6)
    peaked = torch.full((1, 1, V), -1e4)
    peaked[..., 0] = 0.0
    assert float(entropy_from_logits(peaked)) == approx(0.0, abs=1e-6)
    assert float(entropy_bonus(logits, torch.ones(2, 3))) == approx(math.log(V))


def test_logprobs_from_logits():
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    lp = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    assert lp.tolist()[0] == approx([math.log(0.75), math.log(0.5)])


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_moves_towards_target():
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    up.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert up.value == approx(0.1 * (1 + 0.2 * 100 / 10000))
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    down.update(current_kl=5.7, n_steps=100)  # error -0.05, inside the clip
    assert down.value == approx(0.1 * (1 - 0.05 * 100 / 10000))
    assert down.value < 0.1 < up.value
    down.update(float("nan"), 100)
    assert math.isfinite(down.value)


def test_make_kl_controller_from_config():
    fixed = make_kl_controller(AlgoConfig(kl_coef=0.05))
    assert isinstance(fixed, FixedKLController)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
    adaptive = make_kl_controller(AlgoConfig(kl_coef=0.05, kl_target=1.0, kl_horizon=100))
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.05


# ----------------------------------------------------------------------------- batches


def test_pack_sequences_layout():
    seqs, attn, resp_mask, P = pack_sequences([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=0)
    assert P == 2
    assert seqs.tolist() == [[1, 2, 4, 5, 6], [0, 3, 7, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert resp_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    # real tokens count from 0 whatever the left padding (positions on padding do not matter)
    pos = position_ids_from_mask(attn)
    assert pos[0].tolist() == [0, 1, 2, 3, 4] and pos[1, 1:3].tolist() == [0, 1]
    # logits at column P-1+t predict response token t (column P+t)
    cols = torch.arange(seqs.shape[1])[response_logits_slice(P, 3)]
    assert (cols + 1).tolist() == [P, P + 1, P + 2]
    with pytest.raises(ValueError):
        pack_sequences([[]], [[1]], pad_id=0)


def test_pad_float_lists():
    out = pad_float_lists([[0.5, -1.0], [], [2.0]], width=3, value=9.0)
    assert out.tolist() == [[0.5, -1.0, 9.0], [9.0, 9.0, 9.0], [2.0, 9.0, 9.0]]
    with pytest.raises(ValueError):
        pad_float_lists([[1.0, 2.0]], width=1)


def _experience(B=5, P=2, T=3):
    seqs = torch.arange(B * (P + T)).view(B, P + T)
    z = torch.arange(B * T, dtype=torch.float32).view(B, T)
    return Experience(
        sequences=seqs,
        attention_mask=torch.ones_like(seqs),
        response_mask=torch.ones(B, T),
        prompt_len=P,
        rollout_logprobs=z - 1,
        old_logprobs=z,
        rewards=torch.arange(B, dtype=torch.float32),
        advantages=z + 1,
        returns=z + 2,
        values=z + 3,
    )


def test_experience_split_and_to():
    exp = _experience()
    parts = exp.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert all(p.prompt_len == 2 and p.ref_logprobs is None for p in parts)
    assert torch.equal(torch.cat([p.advantages for p in parts]), exp.advantages)
    assert torch.equal(torch.cat([p.sequences for p in parts]), exp.sequences)
    assert parts[2].rewards.tolist() == [4.0]
    assert [len(p) for p in _experience(B=6).chunk(3)] == [2, 2, 2]
    with pytest.raises(ValueError):
        exp.chunk(2)
    moved = exp.to("cpu")
    assert moved.response_len == 3 and torch.equal(moved.values, exp.values)


def test_pack_builds_samples_and_experience_of_adds_the_step_fields():
    r = Rollout(prompt_ids=[[1, 2], [3]], response_ids=[[5], [6, 7]], response_text=["a", "b"],
                rollout_logprobs=[[-0.5], [-0.1, -0.2]], prompt_index=[0, 1])
    samples = pack(r, pad_id=0)
    assert samples.sequences.tolist() == [[1, 2, 5, 0], [0, 3, 6, 7]] and samples.prompt_len == 2
    assert samples.rollout_logprobs.tolist() == [[-0.5, 0.0], [pytest.approx(-0.1), pytest.approx(-0.2)]]
    adv = torch.ones(2, 2)
    exp = Experience.of(samples, rewards=torch.tensor([1.0, 0.0]), advantages=adv, returns=adv, old_logprobs=None)
    assert exp.old_logprobs is None and exp.ref_logprobs is None
    assert torch.equal(exp.sequences, samples.sequences) and exp.response_len == 2
    assert [len(p) for p in exp.split(1)] == [1, 1] and exp.split(1)[1].old_logprobs is None


def test_rollout_sorted_by_prompt_and_checks_lengths():
    r = Rollout(
        prompt_ids=[[1], [2], [1]],
        response_ids=[[5], [6, 7], [8]],
        response_text=["a", "b", "c"],
        rollout_logprobs=[[-0.1], [-0.2, -0.3], [-0.4]],
        prompt_index=[0, 1, 0],
    )
    s = r.sorted_by_prompt()
    assert s.prompt_index == [0, 0, 1] and s.response_text == ["a", "c", "b"]
    assert len(Rollout.concat([r, r])) == 6 and r.finish_reason == ["", "", ""]
    with pytest.raises(ValueError, match="logprobs"):
        Rollout([[1]], [[5, 6]], ["a"], [[-0.1]], [0])


def test_unpack_inverts_pack_sequences():
    prompts, responses = [[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [], [10]]
    seqs, attn, _, P = pack_sequences(prompts, responses, pad_id=0)
    assert unpack(seqs, attn, P) == (prompts, responses)


def test_a_rollout_sampled_with_another_weight_version_is_refused():
    from rlhf.rl.trainer import WeightSyncError, check_weight_version

    r = Rollout([[1], [1]], [[5], [6]], ["a", "b"], [[-0.1], [-0.2]], [0, 0], weight_version=[3, 3])
    check_weight_version(r, 3)
    r.weight_version = [3, 2]  # one engine missed the sync to 3
    with pytest.raises(WeightSyncError, match=r"version\(s\) \[2\], but the learner published version 3"):
        check_weight_version(r, 3)


def test_the_probe_bound_follows_the_dtype_and_stops_a_run_above_it():
    from rlhf.config.tree import load_config
    from rlhf.rl.trainer import PROBE_BOUNDS, WeightSyncError, check_probe, probe_bound

    assert probe_bound(load_config(None, ["model.dtype=float32"])) == 1e-3 == PROBE_BOUNDS["float32"]
    assert probe_bound(load_config(None, ["model.dtype=bfloat16"])) == PROBE_BOUNDS["bfloat16"]
    assert probe_bound(load_config(None, ["rollout.max_logprob_diff=0.02"])) == 0.02
    check_probe(9e-4, 1e-3, 5)
    check_probe(7.0, 0.0, 5)  # 0: the check is off
    with pytest.raises(WeightSyncError, match="version 5 .* by 0.002 > rollout.max_logprob_diff=0.001"):
        check_probe(2e-3, 1e-3, 5)
