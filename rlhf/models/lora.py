"""LoRA through peft: wrapping a model with adapters, and folding adapters back into plain
weights for export and weight sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    from rlhf.config.training import LoraConfig



def apply_lora(model, lora: LoraConfig):
    """Wrap `model` with peft LoRA adapters when enabled; returns the model to train."""
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    peft_cfg = PeftLora(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def merge_lora(model):
    """Fold LoRA adapters into the base weights so the export is a plain HF folder."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def merge_lora_state(state: dict, scale: float) -> dict:
    """Fold peft LoRA tensors into plain HF names: W = W0 + scale * B @ A.

    Input keys look like `base_model.model.<name>.base_layer.weight` and
    `base_model.model.<name>.lora_{A,B}.default.weight`; output keys are `<name>.weight`.
    """
    prefix = "base_model.model."
    merged: dict = {}
    lora: dict[str, dict[str, object]] = {}
    for key, tensor in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if ".lora_A." in name or ".lora_B." in name:
            module, rest = name.split(".lora_", 1)
            lora.setdefault(module, {})[rest[0]] = tensor
            continue
        merged[name.replace(".base_layer.", ".")] = tensor
    for module, parts in lora.items():
        weight = f"{module}.weight"
        delta = (parts["B"].float() @ parts["A"].float()) * scale
        merged[weight] = (merged[weight].float() + delta).to(merged[weight].dtype)
    return merged
