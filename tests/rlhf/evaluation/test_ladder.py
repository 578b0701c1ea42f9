"""The ladder by hand: accuracies per rung, paired differences with neighbours, per type."""

from __future__ import annotations

import pytest

from rlhf.evaluation.ladder import answer_spread, build_ladder, collapsed, ladder_markdown, plot_ladder, question_type

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


def test_a_rung_that_gives_one_answer_to_every_closed_question_is_flagged():
    rows = [{"question": f"Sheet {i}.\n\nIs it red? Answer yes or no.", "reference": ref}
            for i, ref in enumerate(["no", "no", "yes", "no", "yes", "yes", "no", "yes", "no", "no"])]
    sft = ["No.", "no", "yes", "yes", "yes", "no", "no", "yes", "no", "yes"]  # 7 of 10
    rl = ["no"] * 10  # 6 of 10, by saying no to all of them
    # By hand: rl's top answer "no" covers 10/10; the references' top ("no") covers 6/10.
    assert answer_spread(rl, [r["reference"] for r in rows]) == {"top": "no", "share": 1.0, "reference_share": 0.6}
    assert answer_spread(sft, [r["reference"] for r in rows])["share"] == 0.5  # "No." counts as "no"
    ladder = build_ladder([("sft", "s"), ("rl", "r")], rows, {"s": sft, "r": rl}, n_boot=50)
    assert collapsed(ladder[1]["answer_spread"]["yes_no"]) and not collapsed(ladder[0]["answer_spread"]["yes_no"])
    text = ladder_markdown(ladder)
    assert "**rl gives one answer, 'no', to 100% of its yes_no questions** (the most common reference" in text
    assert "sft gives one answer" not in text
    # Most references alike: saying what most of them say is not a collapse.
    assert not collapsed(answer_spread(["yes"] * 10, ["yes"] * 8 + ["no"] * 2))
