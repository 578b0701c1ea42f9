"""Tiny random Llamas for tests and examples: a small BPE tokenizer trained offline and a
~0.5M-parameter model written in about a second, loadable by transformers and vLLM alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.models.paths import cache_dir, is_hf_folder, write_generation_config

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    pass



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
    """A small byte-level BPE tokenizer with a ChatML template, trained offline in about a second.

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
    if is_hf_folder(out) and (out / "model.safetensors").exists() and not force:
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
    write_generation_config(out, tok)
    return out
