"""LoRA on every model the project trains: the stage flag turns it on, scalar heads train beside
the adapters, and the export folds both back into a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.config.training import LoraConfig
from rlhf.models.loading import load_critic, load_scalar_model
from rlhf.models.lora import apply_lora, merge_lora, merge_lora_state

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

LORA = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("load", [load_scalar_model, load_critic], ids=["reward_model", "critic"])
def test_lora_trains_the_scalar_head_and_the_adapters_only(tiny_model_dir, load):
    model = apply_lora(load(tiny_model_dir), LORA)
    trainable = _trainable(model)
    head = [n for n in trainable if ".score." in n]
    assert head and all(".modules_to_save." in n for n in head)  # the trained copy of the head
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert set(trainable) == {n for n in trainable if "lora_" in n} | set(head)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("embed_tokens" in n for n in frozen) and any("q_proj.base_layer" in n for n in frozen)
    assert all(".original_module." in n for n in frozen if ".score." in n)


def _perturbed_reward_model(tiny_model_dir):
    """A LoRA reward model whose adapters and head copy moved away from their init."""
    torch.manual_seed(0)
    model = apply_lora(load_scalar_model(tiny_model_dir, pad_token_id=0), LORA).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                param.normal_(0, 0.5)
    return model


def test_merged_lora_state_carries_the_trained_head(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.loading import load_tokenizer
    from rlhf.models.zero import save_hf

    model = _perturbed_reward_model(tiny_model_dir)
    ids = torch.randint(1, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits  # [2, 1]
    # gather_full_state reads named_parameters: both head copies and the LoRA factors.
    state = merge_lora_state({n: p.detach().clone() for n, p in model.named_parameters()}, LORA.alpha / LORA.r)
    assert not any("lora_" in k or "modules_to_save" in k or "original_module" in k for k in state)
    out = save_hf(state, model.get_base_model().config, tmp_path / "rm", load_tokenizer(tiny_model_dir),
                  AutoModelForSequenceClassification)
    exported, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-4)


def test_merge_lora_keeps_the_trained_head(tiny_model_dir):
    model = _perturbed_reward_model(tiny_model_dir)
    ids = torch.randint(1, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged = merge_lora(model)
        assert not any("modules_to_save" in n or "lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the stage flag


def _job(kind: str, tiny_model_dir: str, tmp_path, *overrides: str):
    from rlhf.config.tree import load_config
    from rlhf.supervised.trainer import FinetuneJob

    cfg = load_config(None, ["model.path=" + tiny_model_dir, *overrides])
    return FinetuneJob(kind=kind, base_model=tiny_model_dir, out_dir=str(tmp_path), settings=getattr(cfg, kind),
                       lora=cfg.model.lora)


def test_stage_lora_flag_alone_turns_lora_on_with_model_lora_settings(tiny_model_dir, tmp_path):
    from rlhf.supervised.trainer import stage_lora

    job = _job("sft", tiny_model_dir, tmp_path, "sft.lora=true", "model.lora.r=2", "model.lora.alpha=6",
               "model.lora.target_modules=[q_proj]")
    assert job.lora.enabled is False  # model.lora.enabled left unset
    lora = stage_lora(job)
    assert lora is not None and lora.enabled
    assert (lora.r, lora.alpha, list(lora.target_modules)) == (2, 6, ["q_proj"])
    assert stage_lora(_job("sft", tiny_model_dir, tmp_path)) is None  # sft.lora unset: full fine-tune


@pytest.mark.parametrize("kind", ["sft", "rm"])
def test_engine_model_gets_adapters_from_the_stage_flag(tiny_model_dir, tmp_path, kind):
    from rlhf.models.zero import prepare_model
    from rlhf.supervised.trainer import _model_builder, stage_lora

    job = _job(kind, tiny_model_dir, tmp_path, f"{kind}.lora=true")
    model = prepare_model(_model_builder(job), stage_lora(job))
    trainable = _trainable(model)
    assert any("lora_A" in n for n in trainable)
    assert any(".score." in n for n in trainable) == (kind == "rm")
    assert all("lora_" in n or ".score." in n for n in trainable)


def test_the_adapter_is_published_in_the_names_peft_saves_and_loads_back(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from actors.weights import local_path, publish_adapter
    from rlhf.models.lora import adapter_config, adapter_state

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LORA)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    state = adapter_state(model, dict(model.named_parameters()))
    assert all(k.startswith("base_model.model.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in state)
    assert len(state) == 2 * 2 * 2  # A and B on q_proj and v_proj of 2 layers
    config = adapter_config(model)
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    packet = publish_adapter(state, config, f"test-{tmp_path.name}", 3, "shm")
    assert packet.kind == "adapter" and packet.num_bytes == sum(t.numel() * 4 for t in state.values())
    folder = local_path(packet, "unused")
    # peft itself reads the folder back to the same model
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)
    # a newer version replaces the folder of the older one
    newer = publish_adapter(state, config, f"test-{tmp_path.name}", 4, "shm")
    assert not Path(folder).exists() and Path(newer.path).is_dir()
