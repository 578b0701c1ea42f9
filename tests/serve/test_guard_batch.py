"""The input classifier's continuous batcher: who waits shares a pass, nobody gets another's scores."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve.guard_batch import ContinuousBatcher


class Scorer:
    """Scores a text by its length; the first pass waits until `release` is set, so the callers
    that arrive meanwhile queue up."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str]) -> list[float]:
        if not self.calls:
            self.release.wait(5)
        self.calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("classifier failed")
        return [float(len(t)) for t in texts]


async def _queued(batcher: ContinuousBatcher, scorer: Scorer, first: list[str], rest: list[list[str]]):
    """`first` starts a pass; `rest` arrive while it runs; then the pass is let go."""
    head = asyncio.create_task(batcher(first))
    await asyncio.sleep(0.05)
    tail = [asyncio.create_task(batcher(texts)) for texts in rest]
    await asyncio.sleep(0.05)
    scorer.release.set()
    return await asyncio.gather(head, *tail, return_exceptions=True)


def test_callers_waiting_during_a_pass_share_the_next_one_and_get_their_own_scores():
    scorer = Scorer()
    batcher = ContinuousBatcher(scorer)
    rest = [["bb", "ccc"], ["dddd"], ["e" * 5, "f" * 6, "g" * 7]]
    out = asyncio.run(_queued(batcher, scorer, ["a"], rest))
    assert out == [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0]]
    assert scorer.calls == [["a"], ["bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg"]]
    assert list(batcher.sizes) == [1, 6] and not batcher.running


def test_a_pass_takes_at_most_max_texts_and_the_rest_wait_for_the_next():
    scorer = Scorer()
    batcher = ContinuousBatcher(scorer, max_texts=3)
    out = asyncio.run(_queued(batcher, scorer, ["a"], [["bb", "cc"], ["ddd"], ["eeee"]]))
    assert out == [[1.0], [2.0, 2.0], [3.0], [4.0]]
    assert list(batcher.sizes) == [1, 3, 1]


def test_a_chats_earlier_turns_are_scored_once():
    scorer = Scorer()
    scorer.release.set()
    batcher = ContinuousBatcher(scorer, cache=2)

    async def chat():
        return [await batcher(["hi"]), await batcher(["hi", "again"]), await batcher(["hi", "again", "hi"]),
                await batcher(["third", "x"])]

    assert asyncio.run(chat()) == [[2.0], [2.0, 5.0], [2.0, 5.0, 2.0], [5.0, 1.0]]
    assert scorer.calls == [["hi"], ["again"], ["third", "x"]]
    assert list(batcher.cache) == ["third", "x"]  # the oldest scores make room


def test_a_failed_pass_fails_its_callers_only_and_the_batcher_goes_on():
    scorer = Scorer()
    batcher = ContinuousBatcher(scorer, max_texts=1)
    out = asyncio.run(_queued(batcher, scorer, ["a"], [["boom"], ["ok"]]))
    assert out[0] == [1.0] and isinstance(out[1], RuntimeError) and out[2] == [2.0]
    with pytest.raises(RuntimeError, match="classifier failed"):
        asyncio.run(batcher(["boom"]))
