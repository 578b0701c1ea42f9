"""DeepSpeed helpers shared by the RL learner and the supervised stages."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.config.training import LoraConfig


def engine_config(micro: int, grad_accum: int, world_size: int, zero_stage: int, clip: float = 1.0,
                  bf16: bool = False, offload_optimizer: bool = False) -> dict:
    """DeepSpeed config: ZeRO stage, precision, clipping, batch geometry."""
    zero: dict = {"stage": zero_stage, "stage3_gather_16bit_weights_on_model_save": False}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro * grad_accum * world_size,
        "gradient_clipping": clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def prepare_model(build_model, lora: LoraConfig | None = None):
    """The model an engine trains: `build_model()`, with LoRA adapters when `lora` is enabled."""
    model = build_model()
    if lora is not None and lora.enabled:
        from rlhf.models.lora import apply_lora

        model = apply_lora(model, lora)
    return model


def build_engine(build_model, config: dict, lr: float, lora: LoraConfig | None = None, warmup_steps: int = 0,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0):
    """Load a model partitioned as it loads (ZeRO-3), optionally add LoRA, wrap in DeepSpeed."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # Holding this object makes from_pretrained partition weights as it loads; wrapping
    # from_pretrained in zero.Init() instead crashes in transformers 5.
    hf_ds = HfDeepSpeedConfig(config)  # noqa: F841 - must stay alive while loading
    model = prepare_model(build_model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel: on CPU the per-tensor AdamW spent a fifth of an update on 135M parameters
    # (single-threaded sqrt/div over the flat partition); fused is ~30x faster (bench/README.md).
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    warmup = max(1, warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    return engine


def gather_full_state(module, rank: int, lora: LoraConfig | None = None, chunk_numel: int = 64 << 20) -> dict | None:
    """Gather ZeRO-3 partitions (collective); rank 0 gets the state dict with LoRA merged into
    plain HF names, other ranks None. Parameters are gathered in chunks of about `chunk_numel`
    elements: one collective per chunk instead of per tensor, without holding the whole model
    twice on every rank."""
    import deepspeed

    state = {}
    named = list(module.named_parameters())
    chunks, current, size = [], [], 0
    for name, param in named:
        current.append((name, param))
        size += getattr(param, "ds_numel", param.numel())
        if size >= chunk_numel:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    for chunk in chunks:
        with deepspeed.zero.GatheredParameters([p for _, p in chunk], modifier_rank=None):
            if rank == 0:
                for name, param in chunk:
                    state[name] = param.data.detach().to("cpu", copy=True)
    if rank != 0:
        return None
    if lora is not None and lora.enabled:
        from rlhf.models.lora import merge_lora_state

        state = merge_lora_state(state, lora.alpha / lora.r)
    return state


def gather_adapter(module, rank: int) -> tuple[dict, dict] | None:
    """Gather only the LoRA adapter of a peft model (collective; a few MB instead of the whole
    model): rank 0 gets (state in peft's saved names, adapter_config.json contents), others None."""
    import deepspeed

    from rlhf.models.lora import adapter_config, adapter_state

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        if rank != 0:
            return None
        state = {n: p.data.detach().to("cpu", copy=True) for n, p in named}
    return adapter_state(module, state), adapter_config(module)


def save_hf(state: dict, config, out_dir: str | Path, tokenizer, model_class) -> Path:
    """Write `state` as a Hugging Face folder with `config` (a transformers config object)."""
    out = Path(out_dir)
    with torch.device("meta"):
        model = model_class.from_config(config)
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
