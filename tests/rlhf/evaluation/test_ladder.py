"""The ladder by hand: accuracies per rung, paired differences with neighbours, per type."""

from __future__ import annotations

import pytest

from rlhf.evaluation.ladder import build_ladder, ladder_markdown, plot_ladder, question_type

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

ROWS = [
    {"question": "Sheet.\n\nHow many months? Answer with the value from the sheet only.", "reference": "12"},
    {"question": "Sheet.\n\nIs it red? Answer yes or no.", "reference": "no"},
    {"question": "Sheet.\n\nWhich colour? Options: red, teal. Answer with one of the options.", "reference": "teal"},
    {"question": "Sheet.\n\nHow much does it cost?", "reference": "40"},
]


def test_question_types():
    assert [question_type(r) for r in ROWS] == ["open", "yes_no", "choice", "open"]
    assert question_type({"question": "Pick one", "reference": "B", "choices": ["x", "y"]}) == "choice"


def test_each_rung_is_compared_with_the_one_below_on_the_same_questions():
    answers = {"b": ["7", "yes", "red", "1"],  # 0 of 4
               "s": ["12", "no", "red", "1"],  # 2 of 4
               "r": ["12", "no", "teal", "40"]}  # 4 of 4
    ladder = build_ladder([("base", "b"), ("sft", "s"), ("rl", "r")], ROWS, answers, n_boot=200, seed=0)
    assert [(r["stage"], r["accuracy"], r["n"]) for r in ladder] == [("base", 0.0, 4), ("sft", 0.5, 4), ("rl", 1.0, 4)]
    assert ladder[0]["diff_vs_previous"] is None and ladder[0]["diff_vs_previous_ci95"] is None
    assert ladder[1]["diff_vs_previous"] == pytest.approx(0.5)
    lo, hi = ladder[2]["diff_vs_previous_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0  # every paired difference is 0 or 1
    by_type = ladder[2]["by_type"]
    assert by_type["open"] == {"accuracy": 1.0, "n": 2, "diff_vs_previous": pytest.approx(0.5),
                               "diff_vs_previous_ci95": by_type["open"]["diff_vs_previous_ci95"]}
    assert by_type["yes_no"]["diff_vs_previous"] == 0.0 and by_type["choice"]["diff_vs_previous"] == 1.0


def test_markdown_and_plot(tmp_path):
    answers = {"b": ["7", "yes", "red", "1"], "r": ["12", "no", "teal", "40"]}
    ladder = build_ladder([("base", "b"), ("rl", "r")], ROWS, answers, n_boot=100)
    text = ladder_markdown(ladder)
    assert "| rl | 1.000 | 4 | +1.000 | [+1.000, +1.000] |" in text and "![ladder](ladder.png)" in text
    plot_ladder(ladder, tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 1000
