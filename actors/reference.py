"""Reference role: a frozen copy of the initial policy that scores responses for the KL term."""

from __future__ import annotations

import torch

from actors.recovery import Restartable
from rlhf.config.tree import Config
from rlhf.models.loading import load_causal_lm
from rlhf.models.logprobs import response_logprobs
from rlhf.models.runtime import attention_impl, reference_device


class ReferenceActor(Restartable):
    """Frozen policy. Public methods: logprobs."""

    def __init__(self, cfg: Config, model_path: str):
        torch.manual_seed(cfg.train.seed)
        # On the GPU share of its bundle where it has one (resources.gpus_per_reference).
        self.device = reference_device(cfg)
        self.model = load_causal_lm(model_path, cfg.model.dtype, attention_impl(cfg)).eval().to(self.device)
        self.model.requires_grad_(False)
        self.micro_batch_size = cfg.learner.micro_batch_size
        self.share_prompts = cfg.learner.share_prompts

    @torch.no_grad()
    def logprobs(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                 response_len: int) -> torch.Tensor:
        """[B, P+T] packed sequences -> [B, T] reference logprobs of the response tokens."""
        parts = [
            response_logprobs(self.model, seq.to(self.device), mask.to(self.device), prompt_len, response_len,
                              share_prompts=self.share_prompts).cpu()
            for seq, mask in zip(sequences.split(self.micro_batch_size), attention_mask.split(self.micro_batch_size))
        ]
        return torch.cat(parts)  # on the CPU: the result goes back through Ray
