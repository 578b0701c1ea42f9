"""Dynamic sampling by hand: groups split and reassembled, ties dropped, short batches topped up."""

from __future__ import annotations

import pytest

from rlhf.data.prompts import PromptBatch
from rlhf.rl.batch import Rollout
from rlhf.rl.dynamic import GroupFilter, assemble, split_groups

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _draw(questions: list[str], rewards: list[float], n: int = 2):
    batch = PromptBatch(questions, [f"ref {q}" for q in questions], [None] * len(questions),
                        [[i + 1] for i in range(len(questions))])
    size = len(questions) * n
    rollout = Rollout(prompt_ids=[[i // n + 1] for i in range(size)], response_ids=[[100 + i] for i in range(size)],
                      response_text=[f"{questions[i // n]}:{i % n}" for i in range(size)],
                      rollout_logprobs=[[-0.1 * i] for i in range(size)], prompt_index=[i // n for i in range(size)],
                      finish_reason=["stop"] * size)
    return split_groups(batch, rollout, rewards, {"reward/rule": [2 * r for r in rewards]})


def test_split_then_assemble_keeps_every_sample_with_its_prompt():
    groups = _draw(["a", "b", "c"], [1.0, 0.0, 0.5, 0.5, 0.0, 1.0])
    assert [g.question for g in groups] == ["a", "b", "c"]
    assert [g.informative for g in groups] == [True, False, True]
    batch, rollout, rewards, comps = assemble([groups[2], groups[0]])
    assert batch.questions == ["c", "a"] and batch.references == ["ref c", "ref a"] and batch.prompt_ids == [[3], [1]]
    assert rollout.response_text == ["c:0", "c:1", "a:0", "a:1"]
    assert rollout.prompt_index == [0, 0, 1, 1]  # renumbered for the new batch
    assert rollout.response_ids == [[104], [105], [100], [101]]
    assert rewards == [0.0, 1.0, 1.0, 0.0] and comps == {"reward/rule": [0.0, 2.0, 2.0, 0.0]}


def test_the_filter_keeps_the_first_informative_groups_across_draws():
    f = GroupFilter(wanted=2)
    f.add(_draw(["a", "b"], [1, 1, 0, 0]))  # both tie
    assert not f.full
    f.add(_draw(["c", "d"], [0, 1, 1, 1]))  # c differs
    f.add(_draw(["e", "g"], [0, 1, 1, 0]))  # e and g differ; only e is needed
    assert f.full
    assert [g.question for g in f.batch()] == ["c", "e"]
    m = f.metrics()
    assert m["rollout/draws"] == 3.0 and m["rollout/uninformative_in_batch"] == 0.0
    assert m["rollout/groups_dropped_frac"] == pytest.approx(3 / 6)  # a, b, d tie


def test_a_batch_still_short_is_topped_up_with_the_newest_ties():
    f = GroupFilter(wanted=3)
    f.add(_draw(["a", "b"], [1, 1, 0, 1]))
    f.add(_draw(["c", "d"], [0, 0, 1, 1]))
    assert [g.question for g in f.batch()] == ["b", "c", "d"]
    assert f.metrics()["rollout/uninformative_in_batch"] == 2.0
