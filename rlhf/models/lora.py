"""LoRA through peft: wrapping a model with adapters, and folding adapters back into plain
weights for export and weight sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    from rlhf.config.training import LoraConfig



# Heads a transformers model class adds on top of the backbone. They start at random init,
# so with LoRA they train in full beside the adapters (peft's modules_to_save), else a reward
# model's or critic's output stays a random projection of the adapted features.
HEAD_NAMES = ("score", "classifier")


def lora_task(model) -> tuple[str, list[str]]:
    """(peft task type, names of the heads to train in full) for a transformers model:
    ...ForSequenceClassification (reward model) -> SEQ_CLS, ...ForTokenClassification (critic)
    -> TOKEN_CLS, anything else (a causal LM) -> CAUSAL_LM with no extra head."""
    name = type(model).__name__
    task = ("SEQ_CLS" if name.endswith("ForSequenceClassification")
            else "TOKEN_CLS" if name.endswith("ForTokenClassification") else "CAUSAL_LM")
    if task == "CAUSAL_LM":
        return task, []
    children = dict(model.named_children())
    return task, [h for h in HEAD_NAMES if h in children]


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` with peft LoRA adapters when enabled; returns the model to train.

    Only the adapters train, plus a scalar model's head (see `lora_task`)."""
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    task, heads = lora_task(model)
    peft_cfg = PeftLora(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type=task,
        modules_to_save=heads or None,
    )
    return get_peft_model(model, peft_cfg)


def merge_lora(model):
    """Fold LoRA adapters into the base weights so the export is a plain HF folder."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def merge_lora_state(state: dict, scale: float) -> dict:
    """Fold peft LoRA tensors into plain HF names: W = W0 + scale * B @ A.

    Input keys look like `base_model.model.<name>.base_layer.weight` and
    `base_model.model.<name>.lora_{A,B}.default.weight`; a fully trained head (modules_to_save)
    as `<head>.modules_to_save.default.<param>` (the trained copy, kept) beside
    `<head>.original_module.<param>` (its frozen init, dropped). Output keys are `<name>.weight`.
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
        if ".original_module." in name:
            continue
        merged[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = tensor
    for module, parts in lora.items():
        weight = f"{module}.weight"
        delta = (parts["B"].float() @ parts["A"].float()) * scale
        merged[weight] = (merged[weight].float() + delta).to(merged[weight].dtype)
    return merged


def adapter_state(model, state: dict) -> dict:
    """The adapter tensors of a peft model in the names peft saves and vLLM loads
    (`base_model.model.<module>.lora_A.weight`, no adapter name), from `state` keyed as in
    `model.named_parameters()`."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state)


def adapter_config(model) -> dict:
    """adapter_config.json contents of a peft model's adapter (JSON-ready: sets become lists)."""
    import json

    config = model.peft_config["default"].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
