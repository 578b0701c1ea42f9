"""Teacher-forced passes of HF models over packed batches (rlhf/rl/batch.py): response-token
logprobs and entropy of a policy, and per-token values of a critic.
"""

from __future__ import annotations

# torch loads inside the functions, so `rlhf` imports fast.


def response_logprobs(model, sequences, attention_mask, prompt_len: int, response_len: int, with_entropy: bool = False,
                      share_prompts: bool = False):
    """Per-token logprobs of the response part of packed sequences under `model`.

    sequences, attention_mask: [B, P+T] (prompts left-padded, responses right-padded; see
    rlhf/rl/batch.py). Returns logprobs [B, T] (fp32) and, if asked, entropy [B, T]. Position ids
    start at each row's first real token so the numbers match the rollout engine's.

    `share_prompts`: rows whose prompt repeats the row before (a group's samples) pay for the
    prompt once: one pass over a row per prompt with its samples' responses behind it
    (`tree_logits`), or, with attention kernels that take no 4D mask (flash attention), the
    responses run on the prompt's cached keys and values (`shared_prompt_logits`). The same
    numbers for about 1/n of the prompt's FLOPs, forward and backward.
    """
    from rlhf.rl.losses import entropy_from_logits, logprobs_from_logits

    groups = prompt_groups(sequences, attention_mask, prompt_len) if share_prompts else None
    if groups is not None:
        shared = tree_logits if takes_4d_masks(model) else shared_prompt_logits
        logits = shared(model, sequences, attention_mask, prompt_len, response_len, *groups)
    else:
        logits = full_pass_logits(model, sequences, attention_mask, prompt_len, response_len)
    logits = logits.float()
    labels = sequences[:, prompt_len : prompt_len + response_len]
    logp = logprobs_from_logits(logits, labels)
    if with_entropy:
        return logp, entropy_from_logits(logits)
    return logp


def full_pass_logits(model, sequences, attention_mask, prompt_len: int, response_len: int):
    """[B, T, V] logits that score the response tokens, from one pass over prompt and response."""
    import torch

    from rlhf.rl.batch import position_ids_from_mask, response_logits_slice

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
    return out.logits


def takes_4d_masks(model) -> bool:
    """Whether the model's attention takes a custom [B, 1, Q, K] mask (eager and SDPA do)."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in ("eager", "sdpa")


def prompt_groups(sequences, attention_mask, prompt_len: int):
    """(first row of each distinct prompt [U], each row's prompt index [B]) when some consecutive
    rows share their prompt (ids and padding alike), else None."""
    import torch

    prompts = torch.cat([sequences[:, :prompt_len], attention_mask[:, :prompt_len].to(sequences.dtype)], dim=1)
    _, inverse, counts = torch.unique_consecutive(prompts, dim=0, return_inverse=True, return_counts=True)
    if len(counts) == len(prompts):
        return None
    first = torch.cumsum(counts, 0) - counts
    return first, inverse


def shared_prompt_logits(model, sequences, attention_mask, prompt_len: int, response_len: int, first, inverse):
    """[B, T, V] response-scoring logits with each distinct prompt run once: pass 1 runs the U
    prompts and keeps their keys and values (its last column scores response token 0); pass 2 runs
    every row's response tokens 0..T-2 on its prompt's cache, copied per row (differentiable, so
    the prompt pass gets the gradients of all its samples)."""
    import torch

    from rlhf.rl.batch import position_ids_from_mask

    positions = position_ids_from_mask(attention_mask)
    p, t = prompt_len, response_len
    first_pass = model(
        input_ids=sequences[first, :p],
        attention_mask=attention_mask[first, :p],
        position_ids=positions[first, :p],
        use_cache=True,
        logits_to_keep=torch.tensor([p - 1], device=sequences.device),
    )
    head = first_pass.logits[inverse]  # [B, 1, V]
    if t == 1:
        return head
    cache = first_pass.past_key_values
    cache.batch_select_indices(inverse)
    rest = model(
        input_ids=sequences[:, p : p + t - 1],
        attention_mask=attention_mask[:, : p + t - 1],
        position_ids=positions[:, p : p + t - 1],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([head, rest.logits], dim=1)


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


def tree_logits(model, sequences, attention_mask, prompt_len: int, response_len: int, first, inverse):
    """[B, T, V] response-scoring logits from one pass over U rows, one per distinct prompt: the
    prompt's real tokens, then each of its samples' response tokens 0..T-2 in a block of its own.
    A 4D mask lets a block see the prompt and itself only, and its positions carry on from the
    prompt's, so every sample sees what it saw alone."""
    import torch

    p, t = prompt_len, response_len
    counts = torch.bincount(inverse)  # samples per prompt
    width = t - 1
    lengths = attention_mask[first, :p].sum(1)  # [U] real prompt tokens
    rows = lengths + counts * width
    r_max = int(rows.max())
    u = len(first)
    ids = torch.zeros((u, r_max), dtype=sequences.dtype, device=sequences.device)
    pos = torch.zeros_like(ids)
    allowed = torch.zeros((u, r_max, r_max), dtype=torch.bool, device=sequences.device)
    score_col = torch.zeros((len(inverse), t), dtype=torch.long, device=sequences.device)  # in row inverse[b]
    slot = torch.arange(len(inverse), device=inverse.device) - first[inverse]  # place in its group
    causal = torch.ones((r_max, r_max), dtype=torch.bool, device=sequences.device).tril()
    for g in range(u):
        n_real = int(lengths[g])
        ids[g, :n_real] = sequences[first[g], p - n_real : p]
        pos[g, :n_real] = torch.arange(n_real)
        allowed[g, :n_real, :n_real] = causal[:n_real, :n_real]
    for b in range(len(inverse)):
        g, k = int(inverse[b]), int(slot[b])
        n_real = int(lengths[g])
        start = n_real + k * width
        ids[g, start : start + width] = sequences[b, p : p + width]
        pos[g, start : start + width] = torch.arange(n_real, n_real + width)
        allowed[g, start : start + width, :n_real] = True
        allowed[g, start : start + width, start : start + width] = causal[:width, :width]
        score_col[b, 0] = n_real - 1
        score_col[b, 1:] = start + torch.arange(width)
    for g in range(u):  # padding rows attend to themselves so no softmax row is empty
        tail = torch.arange(int(rows[g]), r_max)
        allowed[g, tail, tail] = True
    # Additive, in the weights' dtype: eager attention adds the mask to the scores, SDPA takes either.
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequences.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]
    # The LM head runs from the first column that scores anything (the shortest prompt's last
    # token) on, not over every prompt token (as `full_pass_logits` does with `logits_to_keep`).
    start = int(lengths.min()) - 1
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                logits_to_keep=torch.arange(start, r_max, device=sequences.device))
    return out.logits[inverse[:, None], score_col - start]  # [B, T, V]
