"""Teacher-forced passes of HF models over packed batches (rlhf/rl/batch.py): response-token
logprobs and entropy of a policy, and per-token values of a critic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    pass



def response_logprobs(model, sequences, attention_mask, prompt_len: int, response_len: int, with_entropy: bool = False):
    """Per-token logprobs of the response part of packed sequences under `model`.

    sequences, attention_mask: [B, P+T] (prompts left-padded, responses right-padded; see
    rlhf/rl/batch.py). Returns logprobs [B, T] (fp32) and, if asked, entropy [B, T]. Position ids
    start at each row's first real token so the numbers match the rollout engine's.
    """
    import torch

    from rlhf.rl.batch import position_ids_from_mask, response_logits_slice
    from rlhf.rl.losses import entropy_from_logits, logprobs_from_logits

    # Logits only for the T columns that score the response (`logits_to_keep`): the LM head and
    # the vocabulary softmax skip the prompt positions, which score nothing. Given as indices,
    # not a count: a count slices the hidden states into a strided view, and the LM head on a
    # strided input went through a batched matmul that copied its weight per row (a third of a
    # reference pass on SmolLM2, bench/README.md); indexing gathers a contiguous copy instead.
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
    from rlhf.rl.batch import position_ids_from_mask, response_logits_slice

    out = critic(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    return out.logits[:, response_logits_slice(prompt_len, response_len), 0].float()
