"""Back-of-the-envelope memory for sizing a run: how many GPUs each role needs for a model.

The numbers in docs/scaling.md come from here (`python -m rlhf.cluster.sizing` prints its tables), so
the document and the code agree. Estimates, not measurements:

- ZeRO-3 with mixed-precision Adam keeps 16 bytes per parameter (bf16 weights 2 + bf16
  gradients 2 + fp32 master weights 4 + Adam moments 4 + 4), partitioned over N ranks;
  activations are per rank and do not shrink with N.
- Activations assume gradient checkpointing: each layer's input is kept (2 bytes per value),
  one layer is recomputed at a time (~34 bytes per token per hidden unit, Korthikanti et al.
  2022, without the attention-score term that flash attention avoids), and the fp32 logits of
  the micro-batch (4 bytes per token per vocabulary entry) are held for the log-probabilities.
- vLLM's KV cache holds 2 (K and V) x layers x kv_heads x head_dim x bytes per token; tensor
  parallelism splits weights and KV heads across GPUs.
- Reference and reward actors are forward-only bf16 copies of a model (weights plus ~10%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3
ZERO3_BYTES_PER_PARAM = 16
USABLE = 0.9  # of a GPU's memory: CUDA context, allocator fragmentation, NCCL buffers
POWERS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    name: str
    params: float
    """Total parameters."""
    layers: int
    hidden: int
    kv_heads: int
    """Key/value heads (fewer than attention heads with grouped-query attention)."""
    head_dim: int
    vocab: int


# Published configs: SmolLM2 (HuggingFaceTB), Qwen2.5 (Qwen), Llama 3.1 (Meta).
MODELS = (
    ModelShape("SmolLM2-135M", 0.135e9, 30, 576, 3, 64, 49152),
    ModelShape("Qwen2.5-0.5B", 0.494e9, 24, 896, 2, 64, 151936),
    ModelShape("Qwen2.5-1.5B", 1.54e9, 28, 1536, 2, 128, 151936),
    ModelShape("Qwen2.5-7B", 7.62e9, 28, 3584, 4, 128, 152064),
    ModelShape("Qwen2.5-14B", 14.7e9, 48, 5120, 8, 128, 152064),
    ModelShape("Llama-3.1-70B", 70.6e9, 80, 8192, 8, 128, 128256),
)


def weights_gib(params: float, bytes_per_param: float = 2) -> float:
    """Model weights (bf16 by default)."""
    return params * bytes_per_param / GIB


def zero3_states_gib(params: float, ranks: int, bytes_per_param: float = ZERO3_BYTES_PER_PARAM) -> float:
    """Weights, gradients and Adam states per rank under ZeRO-3 (16 bytes/param over N ranks)."""
    return params * bytes_per_param / ranks / GIB


def activations_gib(m: ModelShape, tokens: int) -> float:
    """Per-rank training activations for `tokens` tokens in a micro-batch (checkpointed)."""
    kept = tokens * m.hidden * m.layers * 2
    one_layer = tokens * m.hidden * 34
    logits = tokens * m.vocab * 4
    return (kept + one_layer + logits) / GIB


def kv_cache_gib(m: ModelShape, tokens: int, bytes_per_value: float = 2) -> float:
    """vLLM KV cache for `tokens` tokens in flight: 2 * layers * kv_heads * head_dim * bytes * tokens."""
    return 2 * m.layers * m.kv_heads * m.head_dim * bytes_per_value * tokens / GIB


def learner_ranks(m: ModelShape, gpu_gib: float, tokens_per_rank: int) -> int | None:
    """Fewest ZeRO-3 ranks (one GPU each, powers of two) whose share plus activations fits."""
    room = gpu_gib * USABLE - activations_gib(m, tokens_per_rank)
    for n in POWERS:
        if zero3_states_gib(m.params, n) <= room:
            return n
    return None


def rollout_tp(m: ModelShape, gpu_gib: float, kv_tokens: int) -> int | None:
    """Smallest tensor-parallel size at which an engine's weights and KV cache fit per GPU."""
    for tp in POWERS[:4]:
        kv_split = min(tp, m.kv_heads)  # KV heads are replicated once tp exceeds them
        if weights_gib(m.params) / tp + kv_cache_gib(m, kv_tokens) / kv_split <= gpu_gib * USABLE:
            return tp
    return None


def forward_only_gpus(m: ModelShape, gpu_gib: float) -> float:
    """GPU share a reference or reward actor needs (weights + 10%), rounded up to a tenth."""
    need = weights_gib(m.params) * 1.1 / (gpu_gib * USABLE)
    return math.ceil(need * 10) / 10


def rows(gpu_gib: float, tokens_per_rank: int = 4096, kv_tokens: int = 65536,
         models: tuple[ModelShape, ...] = MODELS) -> list[dict[str, str]]:
    """One table row per model for GPUs of `gpu_gib` GiB."""
    out = []
    for m in models:
        ranks = learner_ranks(m, gpu_gib, tokens_per_rank)
        tp = rollout_tp(m, gpu_gib, kv_tokens)
        ref = forward_only_gpus(m, gpu_gib)
        out.append({
            "model": m.name,
            "params": f"{m.params / 1e9:.3g}B",
            "bf16 weights": f"{weights_gib(m.params):.1f} GiB",
            "ZeRO-3 states (16 B/param)": f"{zero3_states_gib(m.params, 1):.0f} GiB",
            "activations / rank": f"{activations_gib(m, tokens_per_rank):.1f} GiB",
            "learner ranks": str(ranks) if ranks else "> 128",
            "KV cache / 1k tokens": f"{kv_cache_gib(m, 1024) * 1024:.0f} MiB",
            "rollout TP": str(tp) if tp else "> 8",
            "reference / reward GPU": f"{ref:g}" if ref <= 1 else f"{ref:g} (needs sharding)",
        })
    return out


def markdown(table: list[dict[str, str]]) -> str:
    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row[k] for k in head) + " |" for row in table]
    return "\n".join(lines) + "\n"


TABLES = {"80 GiB GPUs (A100-80G, H100)": 80, "24 GiB GPUs (A10G, L4)": 24}


def render() -> str:
    """The tables of docs/scaling.md, exactly as they appear there."""
    parts = []
    for title, gib in TABLES.items():
        parts.append(f"#### {title}\n\n{markdown(rows(gib))}")
    return "\n".join(parts)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
