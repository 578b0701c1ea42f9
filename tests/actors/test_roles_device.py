"""Reference and reward actors put their models (and inputs) on the device their bundle holds.

No GPU here: the model's `.to` is recorded, and inputs are sent to the `meta` device, which
every torch build has, to see that they follow `device`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf.config.tree import load_config

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


class _Recorder(torch.nn.Module):
    """A model stand-in: records where it is moved and where its inputs live."""

    def __init__(self):
        super().__init__()
        self.moved_to: list = []
        self.input_devices: list = []

    def to(self, *args, **kwargs):
        self.moved_to.append(args[0] if args else kwargs.get("device"))
        return self

    def forward(self, input_ids, attention_mask, **_):
        self.input_devices.append((input_ids.device.type, attention_mask.device.type))
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 1))  # [B, 1] scores


def _cfg(*overrides: str):
    return load_config(None, ["model.path=tiny", *overrides])


def test_reference_actor_moves_its_model_to_the_reference_device(monkeypatch):
    import actors.reference as reference

    model = _Recorder()
    monkeypatch.setattr(reference, "load_causal_lm", lambda *a, **k: model)
    gpu = _cfg("resources.use_gpu=true", "resources.gpus_per_reference=0.5")
    actor = reference.ReferenceActor(gpu, "unused")
    assert actor.device == "cuda" and model.moved_to == ["cuda"]
    assert reference.ReferenceActor(_cfg(), "unused").device == "cpu"


def test_reference_logprobs_inputs_follow_the_device_and_come_back_on_cpu(monkeypatch):
    import actors.reference as reference

    model = _Recorder()
    monkeypatch.setattr(reference, "load_causal_lm", lambda *a, **k: model)
    seen = []

    def fake_logprobs(m, seq, mask, prompt_len, response_len, share_prompts):
        assert share_prompts  # learner.share_prompts, on by default
        seen.append((seq.device.type, mask.device.type))
        return torch.zeros(seq.shape[0], response_len)  # [b, T]

    monkeypatch.setattr(reference, "response_logprobs", fake_logprobs)
    actor = reference.ReferenceActor(_cfg("learner.micro_batch_size=2"), "unused")
    actor.device = "meta"  # stands in for cuda
    out = actor.logprobs(torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long), 2, 3)
    assert seen == [("meta", "meta")] * 2  # two micro-batches
    assert out.shape == (3, 3) and out.device.type == "cpu"


def test_reward_actor_puts_the_reward_model_on_the_reward_device(monkeypatch, tiny_model_dir):
    import actors.reward as reward

    made = []
    monkeypatch.setattr(reward, "RewardModelScorer", lambda *a, **k: made.append((a, k)) or object())
    reward.RewardActor(_cfg(f"reward.model_path={tiny_model_dir}", "resources.use_gpu=true",
                            "resources.gpus_per_reward=0.5"))
    reward.RewardActor(_cfg(f"reward.model_path={tiny_model_dir}"))
    assert [k.get("device") for _, k in made] == ["cuda", "cpu"]


def test_scorer_moves_model_and_inputs_to_its_device(monkeypatch, tiny_model_dir):
    import rlhf.models.scorer as scorer

    model = _Recorder()
    monkeypatch.setattr(scorer, "load_scalar_model", lambda *a, **k: model)
    rm = scorer.RewardModelScorer(tiny_model_dir, device="cuda")
    assert model.moved_to == ["cuda"]
    rm.device = "meta"  # stands in for cuda
    assert rm(["q1", "q2"], ["a", "b"]) == [0.0, 0.0]
    assert model.input_devices == [("meta", "meta")]


def test_scorer_on_cpu_scores_with_the_tiny_model(tiny_model_dir):
    from rlhf.models.scorer import RewardModelScorer

    scores = RewardModelScorer(tiny_model_dir)(["What is 1 plus 1?"] * 2, ["2", "a river"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
