"""LoRA RL in this process through the real roles: the learner trains peft adapters, each sync
sends only the adapter to the vLLM engine (a new LoRA adapter id per version), the reference is
the engine's base weights with the adapter off, and a sync that does not reach the engine stops
the run instead of training on a stale policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.cluster.resources import reference_role, role_bundles
from rlhf.config.tree import load_config
from rlhf.models.loading import load_tokenizer
from rlhf.rl.trainer import Trainer, WeightSyncError

pytestmark = pytest.mark.slow
RANK, TARGETS = 8, ("q_proj", "v_proj")


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory, inprocess_roles):
    build_roles, close_roles = inprocess_roles
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.max_prompt_tokens=64", "data.train=gym:basic_arithmetic",
        "data.gym_size=64", "rollout.n_samples=4", "rollout.max_new_tokens=16", "reward.rules={numeric: 1.0}",
        "algo.name=grpo", "algo.kl_coef=0.05", "learner.num_ranks=1", "learner.lr=0.01",
        "learner.micro_batch_size=8", "train.prompts_per_step=2", "train.steps=3",
        "model.lora.enabled=true", f"model.lora.r={RANK}", f"model.lora.target_modules=[{', '.join(TARGETS)}]"])
    run_id = "inproc-lora"
    roles = build_roles(cfg, tiny_model_dir, run_id)
    run_dir = tmp_path_factory.mktemp("inproc-lora")
    (run_dir / "checkpoints").mkdir()
    yield Trainer(cfg, roles, run_dir, load_tokenizer(tiny_model_dir))
    close_roles(roles, run_id)


def adapter_bytes(model_dir: str) -> int:
    """fp32 bytes of rank-RANK adapters on q_proj and v_proj of every layer, by hand:
    A is [r, in], B is [out, r]."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head_dim = c.hidden_size // c.num_attention_heads
    outs = {"q_proj": c.num_attention_heads * head_dim, "v_proj": c.num_key_value_heads * head_dim}
    per_layer = sum(RANK * c.hidden_size + outs[t] * RANK for t in TARGETS)
    return 4 * per_layer * c.num_hidden_layers


def test_the_reference_is_the_engine_base_and_needs_no_actor(lora):
    assert reference_role(lora.cfg) == "engine"
    assert "reference" not in role_bundles(lora.cfg).slots


def test_lora_grpo_sends_only_the_adapter_and_the_engine_follows_every_sync(lora, tiny_model_dir):
    rows = [lora.rl_step() for _ in range(lora.cfg.train.steps)]
    full_bytes = (Path(tiny_model_dir) / "model.safetensors").stat().st_size  # what a full sync moves
    for step, m in enumerate(rows):
        assert m["perf/sync_bytes"] == adapter_bytes(tiny_model_dir) < full_bytes / 10
        assert m["perf/weight_version"] == step  # each rollout sampled with the version just published
        # Engine (base + adapter through vLLM's LoRA kernels) and learner (peft) agree after every sync.
        assert m["rollout/logprob_diff"] < 1e-3, (step, m["rollout/logprob_diff"])
    # Step 1 samples from the initial policy, which is the base: reference = engine, KL ~0. Later
    # steps sample with trained adapters, which the base-weights reference sees as a KL > 0.
    assert rows[0]["objective/kl"] < 1e-3 < rows[-1]["objective/kl"]
    # One adapter id per version (ids start at 1): vLLM caches adapters by id.
    assert lora.roles.rollout.actor.adapter.lora_int_id == lora.weight_version + 1
    assert lora.weight_version == rows[-1]["perf/weight_version"] + 1


def test_an_engine_that_missed_a_sync_is_refused_at_its_next_rollout(lora, monkeypatch):
    monkeypatch.setattr(lora.cfg.rollout, "check_logprobs", False)
    lora.rl_step()  # this step's sync is fine
    monkeypatch.setattr(lora.roles.rollout.actor, "load_weights", lambda packet: 0.0)  # never arrives
    lora.rl_step()  # trains, then the sync silently does nothing
    with pytest.raises(WeightSyncError, match=r"sampled with weight version\(s\) \[\d+\].*missed a weight sync"):
        lora.rl_step()


def test_a_sync_that_silently_keeps_the_old_adapter_stops_the_run(lora, monkeypatch):
    # The engine acknowledges the new version but keeps serving the old adapter (verl #7495):
    # only the logprob probe can tell, and it must stop the run. Last: the engine is stale after.
    monkeypatch.setattr(lora.roles.rollout.actor, "_load_adapter", lambda folder, version: None)
    lora.weight_version = lora.roles.rollout.actor.weights_version
    with pytest.raises(WeightSyncError, match="max_logprob_diff=0.001"):
        lora.rl_step()
