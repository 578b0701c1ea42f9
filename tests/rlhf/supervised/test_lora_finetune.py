"""A LoRA reward model through Ray Train and ZeRO-3: `rm.lora: true` alone turns adapters on,
the score head trains beside them, and the export is a plain Hugging Face folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rlhf.config.tree import load_config


def _pairs(path: Path, n: int = 160) -> Path:
    """A learnable preference: the correct number beats a wordy non-answer."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"What is {a} plus {b}? (#{i})", "chosen": f"The answer is {a + b}.",
                     "rejected": rng.choice(["Because it is a river.", "Please explain the city.", "No, true false."])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_lora_reward_model_trains_and_exports_a_plain_folder(tmp_path, tiny_model_dir):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from rlhf.supervised.inputs import pair_job
    from rlhf.supervised.trainer import run_finetune

    cfg = load_config(None, ["model.path=" + tiny_model_dir, "train.name=t", "rm.batch_size=8",
                             "rm.micro_batch_size=4", "rm.max_length=80", "rm.num_workers=2", "rm.val_fraction=0.2",
                             "rm.lr=0.01", "rm.epochs=2", "rm.lora=true", "model.lora.r=8", "model.lora.alpha=16"])
    assert not cfg.model.lora.enabled
    job = pair_job("rm", cfg, tiny_model_dir, [str(_pairs(tmp_path / "pairs.jsonl"))], tmp_path / "rm")
    rows = run_finetune(job, cfg)
    assert rows[-1]["val/accuracy"] >= 0.8, rows
    with safe_open(str(tmp_path / "rm" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        exported = {k: f.get_tensor(k) for k in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                                  "model.layers.0.self_attn.q_proj.weight")}
    with safe_open(str(Path(tiny_model_dir) / "model.safetensors"), "pt") as f:
        base = {k: f.get_tensor(k) for k in exported}
    # Adapters only: weights outside target_modules are the base model's, q_proj has its adapter folded in.
    assert torch.equal(exported["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(exported["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(exported["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert "score.weight" in keys
    assert not any("lora_" in k or "modules_to_save" in k or "original_module" in k or "base_model" in k
                   for k in keys)
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
