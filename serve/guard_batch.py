"""The endpoint's input guard: the rules on each request, and the classifier's forward pass
shared by the requests that wait for it at the same time (Ray Serve's `serve.batch`)."""

from __future__ import annotations

import asyncio

from ray import serve

from rlhf.safety.guard import Guard
from rlhf.safety.guard_rules import Decision

INPUT_GUARD_BATCH = 64  # requests whose turns the input classifier reads in one forward pass


class BatchedInputGuard:
    """Mixed into the replica class, whose `guard` it reads."""

    guard: Guard

    async def _input_guard(self, turns: list[dict]) -> Decision:
        """`Guard.check_turns`, with the classifier's forward pass shared by the requests that
        wait for it at the same time."""
        verdict, texts = self.guard.prescreen(turns)
        return self.guard.input_verdict(await self._input_scores(texts)) if texts else verdict

    @serve.batch(max_batch_size=INPUT_GUARD_BATCH, batch_wait_timeout_s=0.001)
    async def _input_scores(self, requests: list[list[str]]) -> list[list[float]]:
        """The input classifier's scores of every waiting request's turns, in one forward pass
        off the event loop: one pass at a time, so the requests that arrive during a pass make
        the next batch. On 2 CPU cores with a tiny model the classifier still costs about half
        the endpoint's tokens/s at 64 clients, batched or not (bench/README.md, Serving)."""
        flat = [text for texts in requests for text in texts]
        scores = await asyncio.to_thread(self.guard.input_model.unsafe_probability, flat)
        out, start = [], 0
        for texts in requests:
            out.append(scores[start : start + len(texts)])
            start += len(texts)
        return out
