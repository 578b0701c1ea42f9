"""Typed batches, one per hop of the RL step, with the shape of every tensor written beside it.

  rollout actor --Rollout (plain lists; crosses Ray cheaply)--> trainer
  trainer --Samples (packed tensors)--> reference, learner's old-logprob pass, logprob probe
  trainer --Experience (Samples + rewards, advantages, old/ref logprobs)--> learner group

Layout of a packed batch: prompts are left-padded to width P and responses right-padded to
width T, so response token t of every row sits at column P + t of `sequences`. A causal LM's
logits at position i predict token i + 1, so the logits that score the response are at columns
[P - 1, P - 1 + T) (see `response_logits_slice`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Rollout:
    """What rollout engines return for one step: one entry per sample, in every list.

    Plain Python lists rather than tensors, because this crosses Ray from the vLLM actors and
    lists pickle small and need no torch on either side.
    """

    prompt_ids: list[list[int]]  # [B][P_i] prompt token ids, unpadded
    response_ids: list[list[int]]  # [B][T_i] sampled response token ids, unpadded
    response_text: list[str]  # [B] decoded responses
    rollout_logprobs: list[list[float]]  # [B][T_i] behaviour logprob of each response token
    prompt_index: list[int]  # [B] which prompt of the step each sample answers
    finish_reason: list[str] = field(default_factory=list)  # [B] "stop" | "length" | ...
    weight_version: list[int] = field(default_factory=list)  # [B] policy version the engine sampled with

    def __post_init__(self) -> None:
        if not self.finish_reason:
            self.finish_reason = ["" for _ in self.prompt_ids]
        if not self.weight_version:
            self.weight_version = [0 for _ in self.prompt_ids]
        lengths = {name: len(getattr(self, name)) for name in self._fields()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Rollout lists differ in length: {lengths}")
        for i, (ids, lps) in enumerate(zip(self.response_ids, self.rollout_logprobs)):
            if len(ids) != len(lps):
                raise ValueError(f"sample {i}: {len(ids)} response tokens but {len(lps)} logprobs")

    @staticmethod
    def _fields() -> list[str]:
        return [f.name for f in dataclasses.fields(Rollout)]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @classmethod
    def concat(cls, parts: Sequence[Rollout]) -> Rollout:
        """Join the rollouts of several engines, in the order given."""
        return cls(**{name: [x for p in parts for x in getattr(p, name)] for name in cls._fields()})

    def sorted_by_prompt(self) -> Rollout:
        """Stable sort by `prompt_index`, so each prompt's samples are contiguous (the group
        layout the advantage estimators expect) whatever order engines finished in."""
        order = sorted(range(len(self)), key=lambda i: self.prompt_index[i])
        return Rollout(**{n: [getattr(self, n)[i] for i in order] for n in self._fields()})


class _TensorRows:
    """Row-wise slicing and moving shared by the packed batches below (B rows along dim 0)."""

    sequences: Tensor
    response_mask: Tensor

    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def response_len(self) -> int:
        """T, the padded response width."""
        return int(self.response_mask.shape[1])

    def _map(self, fn):
        """Apply `fn` to every tensor field; ints, bools and Nones pass through."""
        changes = {
            f.name: fn(v)
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str):
        """A copy with every tensor on `device`."""
        return self._map(lambda t: t.to(device))

    def split(self, size: int) -> list:
        """Contiguous micro-batches of at most `size` rows along B (like `torch.split`).

        Contiguous slices keep each prompt's group together when `size` is a multiple of the
        group size.
        """
        if size < 1:
            raise ValueError(f"split size must be >= 1, got {size}")
        return [self._map(lambda t, s=s: t[s : s + size]) for s in range(0, len(self), size)]

    def chunk(self, n: int) -> list:
        """Split into `n` contiguous parts of equal size (B % n == 0), e.g. one per rank."""
        if n < 1 or len(self) % n != 0:
            raise ValueError(f"a batch of {len(self)} does not split into {n} equal parts")
        return self.split(len(self) // n)


@dataclass
class Samples(_TensorRows):
    """One step's samples packed into tensors, for the passes that score them (reference,
    learner's old-logprob pass, the logprob probe); B sequences, P prompt and T response columns."""

    sequences: Tensor  # [B, P+T] long: left-padded prompt then right-padded response
    attention_mask: Tensor  # [B, P+T] long: 1 on real prompt and response tokens
    response_mask: Tensor  # [B, T] float: 1 on real response tokens
    prompt_len: int  # P, the padded prompt width
    rollout_logprobs: Tensor  # [B, T] float: behaviour logprobs from the engine, 0 on padding


@dataclass
class Experience(_TensorRows):
    """One step's training batch for the learner, built once the advantages are known."""

    sequences: Tensor  # [B, P+T] long, as in Samples
    attention_mask: Tensor  # [B, P+T] long
    response_mask: Tensor  # [B, T] float
    prompt_len: int  # P
    rollout_logprobs: Tensor  # [B, T] float: behaviour logprobs from the engine
    rewards: Tensor  # [B] float: total sequence reward
    advantages: Tensor  # [B, T] float
    returns: Tensor  # [B, T] float: value targets (ppo) or the advantages
    old_logprobs: Tensor | None  # [B, T] float: logprobs before this update, or None when the
    # batch gets a single optimizer step (`single_update`): the update's own pass stands in
    ref_logprobs: Tensor | None = None  # [B, T] float: reference logprobs (None without KL)
    values: Tensor | None = None  # [B, T] float: critic values (critic estimators only)

    @classmethod
    def of(cls, samples: Samples, **fields) -> Experience:
        """The training batch for `samples` with the fields the step computed."""
        packed = {f.name: getattr(samples, f.name) for f in dataclasses.fields(Samples)}
        return cls(**packed, **fields)


def pack(rollout: Rollout, pad_id: int) -> Samples:
    """A Rollout's lists -> one padded Samples batch (layout in the module docstring)."""
    seqs, attn, mask, plen = pack_sequences(rollout.prompt_ids, rollout.response_ids, pad_id)
    behaviour = pad_float_lists(rollout.rollout_logprobs, mask.shape[1])
    return Samples(sequences=seqs, attention_mask=attn, response_mask=mask, prompt_len=plen,
                   rollout_logprobs=behaviour)


def unpack(sequences: Tensor, attention_mask: Tensor, prompt_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """The inverse of `pack_sequences`: [B, P+T] packed rows -> ([B][P_i] prompts, [B][T_i]
    responses) without padding, for a pass that takes token lists (a vLLM engine)."""
    prompts, responses = [], []
    for row, mask in zip(sequences.tolist(), attention_mask.tolist()):
        prompts.append([t for t, m in zip(row[:prompt_len], mask[:prompt_len]) if m])
        responses.append([t for t, m in zip(row[prompt_len:], mask[prompt_len:]) if m])
    return prompts, responses


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Left-pad prompts and right-pad responses into one [B, P+T] batch.

    Returns (sequences [B, P+T] long, attention_mask [B, P+T] long, response_mask [B, T]
    float32, P). Response token t of every row is at column P + t. T is at least 1 so an
    all-empty batch still has a (fully masked) response column.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(len(p) == 0 for p in prompt_ids):
        # Scoring the first response token needs the logits of a prompt token before it.
        raise ValueError("every prompt needs at least one token")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    T = max([len(r) for r in response_ids] + [1])
    sequences = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        start = P - len(prompt)
        sequences[i, start:P] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[i, start:P] = 1
        if response:
            end = P + len(response)
            sequences[i, P:end] = torch.as_tensor(list(response), dtype=torch.long)
            attention_mask[i, P:end] = 1
            response_mask[i, : len(response)] = 1.0
    return sequences, attention_mask, response_mask, P


def response_logits_slice(prompt_len: int, response_len: int) -> slice:
    """Columns of a causal LM's output [B, P+T, V] that predict the T response tokens.

    Logits at position i score token i + 1, so response token t (column P + t) is scored by
    column P - 1 + t: use `logits[:, response_logits_slice(P, T)]` -> [B, T, V].
    """
    return slice(prompt_len - 1, prompt_len - 1 + response_len)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that start at 0 on each row's first real token. [B, L] -> [B, L] long.

    Left padding shifts the prompt right; without this the model would see positions offset by
    the pad count and its logprobs would differ from the rollout engine's.
    """
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.clamp(min=0)


def pad_float_lists(lists: Sequence[Sequence[float]], width: int, value: float = 0.0) -> Tensor:
    """Right-pad ragged float lists into a [B, width] float32 tensor filled with `value`."""
    out = torch.full((len(lists), width), value, dtype=torch.float32)
    for i, row in enumerate(lists):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} values, more than width {width}")
        if row:
            out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.float32)
    return out


def single_update(ppo_epochs: int, mini_batches: int, needs_critic: bool) -> bool:
    """Whether each batch gets exactly one optimizer step and no critic pass: then the policy
    that sampled is the policy being updated, the PPO ratio is exactly 1 at the update, and the
    separate pass for "old" logprobs can be skipped (old = the update's own logprobs, detached).
    The gradient is the same; only a redundant forward over the batch goes.

    Decided once, by the trainer; the batch carries the decision (`Experience.old_logprobs` is
    None) to the learner."""
    return ppo_epochs == 1 and mini_batches == 1 and not needs_critic
