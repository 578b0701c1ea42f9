"""Loading models offline: model specs (`smollm2`, `tiny`, `minilm`, a folder) resolved to local
folders, and tokenizers, causal LMs, scalar-head reward models and critics loaded from them.
Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.config.typed_yaml import ConfigError
from rlhf.models.packaged import prepare_smollm2
from rlhf.models.paths import MINILM_PACKAGE, SMOLLM2_NAME, ModelError, cache_dir, is_hf_folder, package_dir
from rlhf.models.tiny import build_tiny_model

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast
    import torch




def resolve_model_path(spec: str) -> str:
    """Turn a model spec into a local folder: `smollm2`, `tiny`, a folder, or a hub id."""
    if not spec:
        raise ModelError("model path is empty: set model.path to a folder, `smollm2` or `tiny`")
    if spec in ("smollm2", SMOLLM2_NAME):
        return str(prepare_smollm2())
    if spec == "tiny":
        return str(build_tiny_model(cache_dir() / "tiny-llama"))
    if spec == "minilm":
        return str(package_dir(MINILM_PACKAGE) / "model")
    path = Path(spec).expanduser()
    if path.exists():
        if not is_hf_folder(path):
            raise ModelError(f"model folder {path} has no config.json (expected a Hugging Face folder)")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in spec:
        raise ModelError(f"model '{spec}' is not a local folder and no hub is reachable here")
    return spec  # a hub id; transformers resolves it where a hub is reachable


# ----------------------------------------------------------------------------- loading


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", attention: str = "sdpa"):
    """`attention`: a transformers attn_implementation (eager, sdpa, flash_attention_2)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=torch_dtype(dtype),
                                                    attn_implementation=attention)
    except OSError as exc:
        raise ModelError(f"cannot load a causal LM from '{path}': {exc}") from None


def load_scalar_model(path: str, dtype: str = "float32", pad_token_id: int | None = None):
    """A reward model: sequence classification with one output (score of the last token)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(path), num_labels=1, dtype=torch_dtype(dtype)
    )
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_critic(path: str, dtype: str = "float32"):
    """A value model: the policy backbone with a one-output token head (random init)."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(path), num_labels=1, dtype=torch_dtype(dtype)
    )
    return model


def resolve_run_models(cfg) -> tuple[str, str]:
    """(policy folder, reference folder) of an RL run, and a check that its reward model exists:
    what can fail without actors and was not checked when the config loaded."""
    try:
        policy = resolve_model_path(cfg.model.path)
        reference = resolve_model_path(cfg.reference.path) if cfg.reference.path else policy
        if cfg.reward.model_path:
            resolve_model_path(cfg.reward.model_path)
    except ModelError as exc:
        raise ConfigError(f"model: {exc}") from None
    return policy, reference
