"""The endpoint's input guard: the rules on each request, and the classifier's forward pass
shared by every request that waits for it.

`ContinuousBatcher` batches the way vLLM schedules: while one forward pass runs, the requests
that arrive wait together, and the next pass takes them all. Ray Serve's `serve.batch` forms a
batch as soon as its short timeout passes and then queues the batch for the single running slot,
so under load it ran one-request batches back to back (measured here: 1.15 requests per pass at
64 clients, and the endpoint capped at the classifier's single-request rate).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable

from rlhf.safety.guard import Guard
from rlhf.safety.guard_rules import Decision

INPUT_GUARD_BATCH = 256  # the most texts the input classifier reads in one forward pass
SCORE_CACHE = 4096  # texts whose scores a replica remembers (a chat resends its earlier turns)


class ContinuousBatcher:
    """`await batcher(texts)` -> `score(texts)`, with the texts of every caller waiting at that
    moment scored in one call of `score` off the event loop; one call runs at a time. The scores
    of the last `cache` texts are kept: a chat's earlier turns, sent again with every new turn,
    are scored once."""

    def __init__(self, score: Callable[[list[str]], list[float]], max_texts: int = INPUT_GUARD_BATCH,
                 cache: int = SCORE_CACHE):
        self.score, self.max_texts, self.cache_size = score, max_texts, cache
        self.cache: OrderedDict[str, float] = OrderedDict()
        self.waiting: list[tuple[list[str], asyncio.Future]] = []
        self.running = False
        self.sizes: deque[int] = deque(maxlen=1000)  # texts per pass, the last 1,000 (tests, benchmarks)

    async def __call__(self, texts: list[str]) -> list[float]:
        known = {t: self._cached(t) for t in texts if t in self.cache}
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            future = asyncio.get_running_loop().create_future()
            self.waiting.append((new, future))
            if not self.running:
                self.running = True
                self._task = asyncio.get_running_loop().create_task(self._drain())  # kept: tasks are weakly held
            known.update(zip(new, await future))
        return [known[t] for t in texts]

    def _cached(self, text: str) -> float:
        self.cache.move_to_end(text)
        return self.cache[text]

    def _remember(self, texts: list[str], scores: list[float]) -> None:
        self.cache.update(zip(texts, scores))
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch = self._take()
                flat = [text for texts, _ in batch for text in texts]
                self.sizes.append(len(flat))
                try:
                    scores = await asyncio.to_thread(self.score, flat)
                except Exception as exc:  # every caller of this pass gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._remember(flat, scores)
                start = 0
                for texts, future in batch:
                    if not future.done():  # a cancelled request's scores are dropped
                        future.set_result(scores[start : start + len(texts)])
                    start += len(texts)
        finally:
            self.running = False

    def _take(self) -> list[tuple[list[str], asyncio.Future]]:
        """The waiting callers, oldest first, up to max_texts texts (at least one caller)."""
        count, texts = 0, 0
        while count < len(self.waiting) and (count == 0 or texts + len(self.waiting[count][0]) <= self.max_texts):
            texts += len(self.waiting[count][0])
            count += 1
        batch, self.waiting = self.waiting[:count], self.waiting[count:]
        return batch


class BatchedInputGuard:
    """Mixed into the replica class, whose `guard` it reads."""

    guard: Guard
    _input_batcher: ContinuousBatcher | None = None

    async def _input_guard(self, turns: list[dict]) -> Decision:
        """`Guard.check_turns`, with the classifier's forward pass shared by the requests that
        wait for it at the same time."""
        verdict, texts = self.guard.prescreen(turns)
        if not texts:
            return verdict
        if self._input_batcher is None:
            self._input_batcher = ContinuousBatcher(self.guard.input_model.unsafe_probability)
        return self.guard.input_verdict(await self._input_batcher(texts))
