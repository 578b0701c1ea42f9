"""The rl stage's prompt mix follows what the pairs probe says RL can sharpen, per question type."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.data.tables import load_source
from rlhf.rl.curriculum import probe_scores, sharpening_headroom, type_counts, weight_by_headroom

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _probe(rows: list[tuple[str, float, float]]) -> pa.Table:
    return pa.table({"question": [f"q{i}" for i in range(len(rows))], "type": [t for t, _, _ in rows],
                     "pass_rate": [p for _, p, _ in rows], "majority_score": [m for _, _, m in rows]})


def _pool(counts: dict[str, int]) -> pa.Table:
    types = [t for t, n in counts.items() for _ in range(n)]
    return pa.table({"question": [f"{t} {i}" for i, t in enumerate(types)], "reference": ["x"] * len(types),
                     "type": types})


def test_probe_scores_are_mean_at_k_and_the_most_frequent_answers_score():
    # "Paris" twice (after normalising), "Lyon" once, "Nice" once: the vote is right.
    got = probe_scores(["Paris", "paris.", "Lyon", "Nice"], [1.0, 1.0, 0.0, 0.0])
    assert got == {"pass_rate": 0.5, "majority_score": 1.0, "score_spread": 1.0}
    # A 2-2 tie between a right and a wrong answer: half a vote each.
    assert probe_scores(["yes", "no", "no", "yes"], [1, 0, 0, 1])["majority_score"] == 0.5
    # A guess that leans the wrong way: the vote is worse than one sample.
    assert probe_scores(["yes", "yes", "yes", "no"], [0, 0, 0, 1]) == {
        "pass_rate": 0.25, "majority_score": 0.0, "score_spread": 1}


def test_headroom_is_maj_at_k_minus_mean_at_k_per_type_and_never_negative():
    probe = _probe([("open", 0.75, 1.0), ("open", 0.5, 1.0), ("open", 1.0, 1.0),  # 1.0 - 0.75
                    ("yes_no", 0.75, 1.0), ("yes_no", 0.25, 0.0),  # 0.5 - 0.5: guesses
                    ("choice", 0.5, 0.0)])  # the vote is worse than one sample: 0, not -0.5
    assert sharpening_headroom(probe) == pytest.approx({"open": 0.25, "yes_no": 0.0, "choice": 0.0})
    assert sharpening_headroom(probe.drop_columns(["type"])) == {}


def test_the_type_with_most_headroom_is_kept_whole_and_the_others_in_proportion():
    pool = _pool({"open": 1000, "choice": 1000, "yes_no": 1000})
    kept = type_counts(weight_by_headroom(pool, {"open": 0.2, "choice": 0.05, "yes_no": 0.0}, seed=0))
    assert kept["open"] == 1000
    assert abs(kept["choice"] - 250) < 45  # 1000 x 0.05 / 0.2, binomial sd ~14
    assert "yes_no" not in kept  # nothing for RL to sharpen there


def test_rows_keep_their_columns_and_order_and_the_mix_is_seeded():
    pool = _pool({"yes_no": 50, "open": 50})
    headroom = {"yes_no": 0.05, "open": 0.2}
    a, b = weight_by_headroom(pool, headroom, seed=3), weight_by_headroom(pool, headroom, seed=3)
    assert a.equals(b) and a.schema == pool.schema
    questions = a["question"].to_pylist()
    assert questions == [q for q in pool["question"].to_pylist() if q in set(questions)]


def test_untyped_questions_no_headroom_and_unprobed_types_leave_rows_in():
    pool = _pool({"yes_no": 10, "new_kind": 10})
    assert weight_by_headroom(pool.drop_columns(["type"]), {"a": 0.5}).num_rows == 20
    assert weight_by_headroom(pool, {"yes_no": 0.0}).num_rows == 20  # no headroom anywhere: as it is
    assert type_counts(weight_by_headroom(pool, {"yes_no": 0.3}))["new_kind"] == 10


def test_generated_support_questions_carry_their_type():
    table = load_source("synth:support", "prompts", size=30, seed=0).table
    assert set(table["type"].to_pylist()) == {"open", "yes_no", "choice"}


def test_headroom_prompts_need_the_pairs_stage_and_a_known_value():
    with pytest.raises(ConfigError, match="pipeline.rl_prompts: `headroom` weighs the prompts by the pairs stage"):
        load_config(None, ["pipeline.rl_prompts=headroom", "pipeline.stages=[sft, rl, eval]"])
    with pytest.raises(ConfigError, match="pipeline.rl_prompts: unknown value 'hard'; valid: data, headroom"):
        load_config(None, ["pipeline.rl_prompts=hard"])
    assert load_config(None, ["pipeline.rl_prompts=headroom"]).pipeline.rl_prompts == "headroom"
