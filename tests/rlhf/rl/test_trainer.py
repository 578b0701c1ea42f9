"""The trainer built from the real role classes, in this process and without Ray: rollout on a
vLLM engine, rule rewards, the frozen reference and a one-rank ZeRO-3 learner on gloo, each
handed to the trainer through the Protocols of rlhf/rl/trainer.py. One step, checked by hand."""

from __future__ import annotations

import json
import random
import zlib
from concurrent.futures import Future

import pytest
import torch

from rlhf.config.tree import load_config
from rlhf.models.loading import load_tokenizer
from rlhf.rl.trainer import Trainer, merge_metrics
from rlhf.tracking import MetricsLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory, inprocess_roles):
    build_roles, close_roles = inprocess_roles
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.max_prompt_tokens=64", "data.train=gym:basic_arithmetic",
        "data.gym_size=64", "rollout.n_samples=4", "rollout.max_new_tokens=16", "reward.rules={numeric: 1.0}",
        "algo.name=grpo", "algo.kl_coef=0.05", "learner.num_ranks=1", "learner.lr=0.003",
        "learner.micro_batch_size=8", "train.prompts_per_step=2", "train.steps=1"])
    run_id = "inproc"
    roles = build_roles(cfg, tiny_model_dir, run_id)
    run_dir = tmp_path_factory.mktemp("inproc")
    (run_dir / "checkpoints").mkdir()
    yield Trainer(cfg, roles, run_dir, load_tokenizer(tiny_model_dir))
    close_roles(roles, run_id)


def test_one_step_by_hand(trainer):
    before = trainer.roles.learner.rank.version
    metrics = trainer.rl_step()
    exp = trainer.roles.learner.updates[-1]
    n = trainer.cfg.rollout.n_samples
    # One optimizer step per batch and no critic: decided once, carried by the batch.
    assert trainer.single_update and exp.old_logprobs is None and exp.values is None
    assert len(exp) == 2 * n and trainer.step == 1 and trainer.roles.learner.rank.version == before + 1
    # One rule with weight 1: the total is that rule's score.
    assert metrics["reward/mean"] == pytest.approx(float(exp.rewards.mean()), abs=1e-6)
    assert metrics["reward/numeric"] == pytest.approx(metrics["reward/mean"], abs=1e-6)
    # GRPO by hand: each group's rewards centred and divided by their (n-1) std + 1e-6.
    groups = exp.rewards.view(-1, n)
    expected = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
    assert torch.allclose(exp.advantages[:, 0], expected.reshape(-1), atol=1e-5)
    # The reference is the initial policy: its logprobs equal the engine's, so KL starts at ~0.
    mask = exp.response_mask.bool()
    assert (exp.ref_logprobs - exp.rollout_logprobs).abs()[mask].max() < 1e-3
    assert metrics["objective/kl"] < 1e-3
    # The update's own pass stood in for the old pass and reported entropy and the behaviour gap.
    assert metrics["rollout/behaviour_logprob_diff"] < 1e-3 and metrics["objective/entropy"] > 0
    # The new weights reached the engine: both sides score the step's samples alike again.
    assert metrics["rollout/logprob_diff"] < 1e-3 and metrics["perf/weight_load_seconds"] > 0
    # The engine sampled with the initial weights (version 0); the sync moved every weight once
    # (fp32, the tied LM head stored once, as in the model's own file).
    assert metrics["perf/weight_version"] == 0 and trainer.weight_version == 1
    params = trainer.roles.learner.rank.policy.module.parameters()
    assert metrics["perf/sync_bytes"] == 4 * sum(getattr(p, "ds_numel", p.numel()) for p in params)
    for key in ("timing/generate", "timing/score", "timing/advantages", "timing/update", "timing/sync",
                "loss/policy", "clip_ratio/region_mean"):
        assert key in metrics, key


def test_checkpoint_restores_the_python_rng(trainer):
    trainer.save()
    expected = [random.random() for _ in range(3)]
    random.seed(12345)  # anything else
    trainer.resume()
    assert [random.random() for _ in range(3)] == expected
    # and the run goes on from the saved step, with its metrics log continuous
    log = MetricsLog(trainer.run_dir, resume_step=trainer.step)
    assert trainer.step == 1
    log.close()


STEP_FIGURES = ("reward/mean", "loss/policy", "objective/kl", "objective/entropy", "rollout/response_length",
                "policy/approx_kl")


def test_a_resumed_run_repeats_the_uninterrupted_one_step_by_step(trainer):
    """Checkpoint at step k, run two steps, go back to k, run them again: the same prompts, the
    same sampled tokens (the engines are reseeded per step), the same losses and the same Adam
    moments after each step."""
    trainer.save()

    def two_steps() -> list[tuple]:
        out = []
        for _ in range(2):
            metrics = trainer.rl_step()
            exp = trainer.roles.learner.updates[-1]
            out.append(([metrics[k] for k in STEP_FIGURES], exp.sequences.tolist(),
                        trainer.roles.learner.rank.optimizer_fingerprint()))
        return out

    first = two_steps()
    trainer.resume()
    # A resumed engine is a fresh process whose random stream is wherever its start left it:
    # here engine and learner share this process, so move the stream away from the saved one.
    torch.manual_seed(12345)
    again = two_steps()
    for (figures, tokens, moments), (figures2, tokens2, moments2) in zip(first, again):
        assert tokens == tokens2
        assert figures2 == pytest.approx(figures, rel=1e-5, abs=1e-7)
        assert moments2 == pytest.approx(moments, rel=1e-6)


def test_ctrl_c_finishes_the_step_under_way_then_checkpoints(trainer, monkeypatch):
    import os
    import signal

    from rlhf.rl.trainer import Interrupted

    learner = trainer.roles.learner
    update = learner.update

    def interrupted_update(exp, kl_coef):  # Ctrl-C arrives in the middle of the update
        os.kill(os.getpid(), signal.SIGINT)
        return update(exp, kl_coef)

    monkeypatch.setattr(learner, "update", interrupted_update)
    start = trainer.step
    monkeypatch.setattr(trainer.cfg.train, "steps", start + 5)
    version, handler = learner.rank.version, signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match=f"step {start + 1} finished and saved"):
        trainer.run(MetricsLog(trainer.run_dir, resume_step=start))
    # The step ran to its end (update and sync), and its checkpoint is the one to resume from.
    assert trainer.step == start + 1 and learner.rank.version == version + 1
    state = json.loads((trainer.checkpoint_dir / "trainer_state.json").read_text())
    assert state["step"] == start + 1 and state["tag"] == f"step{start + 1}"
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back after the run


def test_a_metric_reported_twice_is_an_error():
    assert merge_metrics({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="reported twice.*'a'"):
        merge_metrics({"a": 1}, {"a": 2})


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "micro_token_mean"])
def test_the_learner_aggregates_the_loss_over_the_whole_mini_batch(trainer, mode, monkeypatch):
    from rlhf.rl.aggregation import aggregate, mini_batch_units
    from rlhf.rl.masked import masked_mean

    rank, exp = trainer.roles.learner.rank, trainer.roles.learner.updates[0]
    monkeypatch.setattr(rank.cfg.algo, "loss_agg", mode)
    loss = torch.rand(exp.response_mask.shape, generator=torch.Generator().manual_seed(0))
    micros = exp.split(3)  # 8 rows -> 3, 3, 2: uneven micro-batches
    units = rank._units(micros)
    # DeepSpeed divides each micro-batch's loss by the accumulation steps before summing.
    parts = [rank._policy_term(loss[3 * i: 3 * i + len(m)], m.response_mask, units, len(micros)) / len(micros)
             for i, m in enumerate(micros)]
    if mode == "micro_token_mean":  # today's per-micro mean, kept as is
        assert units is None
        want = sum(masked_mean(loss[3 * i: 3 * i + len(m)], m.response_mask) for i, m in enumerate(micros)) / 3
    else:
        want = aggregate(mode, loss, exp.response_mask, mini_batch_units(mode, [exp.response_mask]),
                         trainer.cfg.rollout.max_new_tokens)
    assert float(sum(parts)) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("algo", ["rloo", "reinforce_pp"])
def test_critic_free_estimators_run_in_the_loop_with_clip_higher_tis_and_token_mean(trainer, algo, monkeypatch):
    for name, value in (("name", algo), ("clip_eps_high", 0.28), ("tis_cap", 2.0), ("loss_agg", "token_mean")):
        monkeypatch.setattr(trainer.cfg.algo, name, value)
    version = trainer.roles.learner.rank.version
    metrics = trainer.rl_step()
    exp = trainer.roles.learner.updates[-1]
    assert trainer.roles.learner.rank.version == version + 1 and exp.old_logprobs is None
    mask = exp.response_mask.bool()
    if algo == "rloo":  # by hand: each reward minus the mean of the other n-1 in its group
        n = trainer.cfg.rollout.n_samples
        groups = exp.rewards.view(-1, n)
        expected = groups - (groups.sum(1, keepdim=True) - groups) / (n - 1)
        assert torch.allclose(exp.advantages[:, 0], expected.reshape(-1), atol=1e-5)
    else:  # REINFORCE++: returns whitened over every valid token of the batch
        assert abs(float(exp.advantages[mask].mean())) < 1e-4
    # Engine and learner agree to ~1e-3 in fp32: TIS weights sit at 1 and none is capped.
    assert metrics["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-2)
    assert metrics["rollout/tis_capped_frac"] == 0.0
    assert torch.isfinite(torch.tensor(metrics["loss/policy"]))


class TieBreakingScorer:
    """Rewards that differ within the group of every question whose crc32 is even, and tie
    (0.5 for all n samples) for the others; remembers the questions of each call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    @staticmethod
    def informative(question: str) -> bool:
        return zlib.crc32(question.encode()) % 2 == 0

    def score_async(self, questions, responses, references, choices, n_tokens) -> Future:
        self.calls.append(list(questions))
        rewards = [float(j % 2) if self.informative(q) else 0.5 for j, q in enumerate(questions)]
        done: Future = Future()
        done.set_result((rewards, {"reward/crafted": rewards}))
        return done


def test_dynamic_sampling_trains_on_groups_whose_rewards_differ(trainer, monkeypatch):
    monkeypatch.setattr(trainer.cfg.algo, "dynamic_sampling", True)
    monkeypatch.setattr(trainer.cfg.algo, "max_draws", 4)
    scorer = TieBreakingScorer()
    monkeypatch.setattr(trainer.roles, "reward", scorer)
    metrics = trainer.rl_step()
    exp = trainer.roles.learner.updates[-1]
    n, wanted = trainer.cfg.rollout.n_samples, trainer.cfg.train.prompts_per_step
    seen = [q for call in scorer.calls for q in call[::n]]  # one question per group, in draw order
    informative = [q for q in seen if scorer.informative(q)]
    kept = min(wanted, len(informative))
    # The learner's batch: the first `wanted` informative groups, topped up only when too few.
    assert len(exp) == wanted * n
    assert int((exp.rewards.view(-1, n).std(1) > 0).sum()) == kept
    # It stopped drawing as soon as the batch was full, or after max_draws.
    before_last = [q for call in scorer.calls[:-1] for q in call[::n] if scorer.informative(q)]
    assert len(scorer.calls) == 4 or len(before_last) < wanted <= len(informative)
    assert metrics["rollout/draws"] == len(scorer.calls)
    assert metrics["rollout/groups_dropped_frac"] == pytest.approx(1 - len(informative) / len(seen))
    assert metrics["rollout/uninformative_in_batch"] == wanted - kept
    assert metrics["reward/crafted"] == pytest.approx(float(exp.rewards.mean()))
