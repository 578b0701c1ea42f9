"""Tokenised examples for the supervised stages, and padding them into batches.

SFT: chat-templated question, then the answer; loss only on answer tokens (and the closing
end-of-turn token). Pairs (RM, DPO): one prompt with a chosen and a rejected answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data.prompts import render_prompt
from rlhf.models.scorer import rm_text
from rlhf.supervised.objectives import IGNORE


@dataclass
class TokenExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens


def answer_example(tokenizer, question: str, answer: str, max_length: int, system_prompt: str = "",
                   chat_template: bool = True) -> TokenExample:
    """Prompt and answer tokenised separately so the loss boundary is exact."""
    prompt = tokenizer(render_prompt(tokenizer, question, system_prompt, chat_template),
                       add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    # Keep the whole answer where possible: trim the prompt from the left first.
    room = max(1, max_length - len(answer_ids))
    prompt = prompt[-room:]
    ids = (prompt + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt) + answer_ids)[:max_length]
    return TokenExample(ids, labels)


@dataclass
class PairExample:
    chosen: TokenExample
    rejected: TokenExample
    margin: float = 0.0


def pair_example(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int, margin: float = 0.0,
                 system_prompt: str = "", chat_template: bool = True) -> PairExample:
    return PairExample(
        answer_example(tokenizer, prompt, chosen, max_length, system_prompt, chat_template),
        answer_example(tokenizer, prompt, rejected, max_length, system_prompt, chat_template),
        margin,
    )


def rm_pair_example(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int,
                    margin: float = 0.0) -> PairExample:
    def encode(response: str) -> TokenExample:
        ids = tokenizer(rm_text(tokenizer, prompt, response), add_special_tokens=True, truncation=True,
                        max_length=max_length).input_ids
        return TokenExample(ids, list(ids))

    return PairExample(encode(chosen), encode(rejected), margin)


def pad_batch(examples: list[TokenExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad -> input_ids [B, L], attention_mask [B, L], labels [B, L]."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pair_batch(pairs: list[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one padded batch of 2B."""
    batch = pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return batch


def shard(items: list, rank: int, world: int, multiple: int) -> list:
    """Equal contiguous shards (ZeRO-3 needs every rank to run the same number of passes),
    each trimmed to a multiple of `multiple`."""
    per = (len(items) // world) // multiple * multiple
    return items[rank * per : (rank + 1) * per]
