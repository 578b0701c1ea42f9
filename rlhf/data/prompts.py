"""RL prompts: load questions, render them with the chat template, and hand out batches.

The sampler's state (epoch, position) is two integers saved in every checkpoint, so a resumed
run sees exactly the prompts it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from rlhf.config.tree import Config
from rlhf.data.heldout import without_heldout
from rlhf.data.tables import load_source, split


@dataclass
class PromptBatch:
    """The prompts of one step (before sampling n responses for each)."""

    questions: list[str]  # [N] raw questions
    references: list[str | None]  # [N] reference answers for rule rewards
    choices: list[list[str] | None]  # [N] options of closed-ended questions
    prompt_ids: list[list[int]]  # [N][P_i] chat-templated, tokenized prompts


def render_prompt(tokenizer, question: str, system_prompt: str = "", chat_template: bool = True) -> str:
    """The text the policy sees: the chat template when the tokenizer has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"Question: {question}\nAnswer:"


def with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    """`messages` led by the operator's `system_prompt` (model.system_prompt) when they bring no
    system turn of their own; a caller's system turn is kept as it is."""
    if not system_prompt or any(m["role"] in ("system", "developer") for m in messages):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render_chat(tokenizer, messages: list[dict], chat_template: bool = True) -> str:
    """A whole conversation (system, user, assistant turns) as the policy sees it; without a chat
    template, earlier turns as "Role: text" lines, then the last user turn as a question."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages[:-1]]
    return "\n".join([*lines, render_prompt(tokenizer, messages[-1]["content"], chat_template=False)])


def encode_prompt(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[-max_tokens:]  # keep the end: the question and the assistant header


def encode_questions(tokenizer, questions: Sequence[str], cfg: Config) -> list[list[int]]:
    """[N] questions -> [N][P_i] prompt ids: chat-templated (cfg.model) and cut to the last
    model.max_prompt_tokens tokens, as the policy sees them in training."""
    m = cfg.model
    return [encode_prompt(tokenizer, render_prompt(tokenizer, q, m.system_prompt, m.chat_template),
                          m.max_prompt_tokens) for q in questions]


def training_prompts(cfg: Config) -> tuple[pa.Table, int]:
    """The RL prompts of `cfg.data` less its validation share (by hash) and the held-out
    evaluation questions; and how many held-out questions were dropped."""
    kind = "qa" if cfg.data.kind == "qa" else "prompts"
    result = load_source(cfg.data.train, kind, cfg.data.fields, cfg.data.gym_size, cfg.data.seed)
    train, _ = split(result.table, cfg.data.val_fraction, seed=cfg.data.seed)
    return without_heldout(train, "question", cfg, "rl prompts")


class PromptSet:
    """Training prompts from `cfg.data` (the validation share is held out by hash)."""

    def __init__(self, cfg: Config, tokenizer):
        train, self.heldout_dropped = training_prompts(cfg)
        rows = train.to_pylist()
        if not rows:
            raise ValueError(f"{cfg.data.train}: no training prompts left after the validation split "
                             f"and dropping {self.heldout_dropped} held-out evaluation questions")
        self.questions = [r["question"] for r in rows]
        self.references = [r.get("reference", r.get("answer")) for r in rows]
        self.choices = [r.get("choices") for r in rows]
        self.prompt_ids = encode_questions(tokenizer, self.questions, cfg)

    def __len__(self) -> int:
        return len(self.questions)

    def batch(self, indices: list[int]) -> PromptBatch:
        return PromptBatch(
            questions=[self.questions[i] for i in indices],
            references=[self.references[i] for i in indices],
            choices=[self.choices[i] for i in indices],
            prompt_ids=[self.prompt_ids[i] for i in indices],
        )


class PromptSampler:
    """Shuffled passes over the prompt set; each epoch's order depends only on (seed, epoch)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
            take = min(self.batch_size - len(out), self.size - self.position)
            out.extend(order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
