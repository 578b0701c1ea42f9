"""Relevance and coherence of answers, measured with models rather than rules.

  - relevance: cosine similarity of the answer's sentence embedding to the question's and to the
    reference's, with the packaged all-MiniLM-L6-v2 encoder (mean pooling, as it was trained).
  - perplexity under the base model: exp of minus the mean token logprob of the answer as the
    evaluation's baseline scores it (teacher-forced); fluent text the base model finds likely
    scores low, garbled text high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings on the CPU, L2-normalised."""

    def __init__(self, spec: str = "minilm", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        from rlhf.models.loading import resolve_model_path

        path = resolve_model_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """[N] texts -> [N, D] embeddings (D = 384 for MiniLM), in the order given. Batches are
        formed from texts of similar length, so a long jailbreak prompt does not pad 63 short
        questions to its length (2.3x faster on the guard's 2956 rows; the embeddings agree to 1e-7)."""
        if not texts:
            return torch.empty(0, self.model.config.hidden_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [self.embed([texts[i] for i in order[start : start + self.batch_size]])
               for start in range(0, len(order), self.batch_size)]
        pooled = torch.cat(out)
        embeddings = torch.empty_like(pooled)
        embeddings[torch.tensor(order)] = pooled
        return embeddings

    def embed(self, batch: Sequence[str]) -> torch.Tensor:
        """[B] texts -> [B, D]: the mean of the last hidden states over real tokens, L2-normalised;
        differentiable when called with gradients on (the guard fine-tunes through it)."""
        enc = self.tokenizer(list(batch), padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state  # [B, L, D]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def similarities(encoder: SentenceEncoder, answers: Sequence[str], others: Sequence[str]) -> list[float | None]:
    """Cosine similarity of each answer to its counterpart; None for an empty answer."""
    a, b = encoder(list(answers)), encoder(list(others))
    sims = (a * b).sum(-1).tolist()
    return [s if ans.strip() else None for s, ans in zip(sims, answers)]


def perplexities(logprobs: Sequence[Sequence[float]] | None) -> list[float | None]:
    """exp(-mean logprob) per answer; None where an answer has no scored token."""
    if logprobs is None:
        return []
    return [math.exp(-sum(lp) / len(lp)) if lp else None for lp in logprobs]
