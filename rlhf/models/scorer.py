"""Reward-model scoring in-process: how a (question, response) pair is shown to a scalar-head
model, and a micro-batched scorer. The reward actor and the evaluation both use it, so a
reward model scores the same text in training, RL and evaluation."""

from __future__ import annotations

from rlhf.models.loading import load_scalar_model, load_tokenizer


def rm_text(tokenizer, question: str, response: str) -> str:
    """How a (question, response) pair is shown to the reward model."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"Question: {question}\nAnswer: {response}"


class RewardModelScorer:
    """A sequence-classification model with one output: higher is better."""

    def __init__(self, path: str, dtype: str = "float32", micro_batch_size: int = 16, max_length: int = 512,
                 device: str = "cpu"):
        """`device`: cpu, or cuda where the caller holds a GPU (see rlhf.models.runtime.reward_device)."""
        self.tokenizer = load_tokenizer(path)
        self.device = device
        self.model = load_scalar_model(path, dtype, pad_token_id=self.tokenizer.pad_token_id).eval().to(device)
        self.micro_batch_size, self.max_length = micro_batch_size, max_length

    def __call__(self, questions: list[str], responses: list[str]) -> list[float]:
        """One score per (question, response) pair."""
        import torch

        texts = [rm_text(self.tokenizer, q, r) for q, r in zip(questions, responses)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.micro_batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.micro_batch_size],
                    return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                ).to(self.device)
                # logits [b, 1]: one score per sequence
                scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores
