"""The evaluation's LLM judge: reading its 1-5 ratings, and their means (checked by hand).
Through a real endpoint (our own `rlhf serve`): tests/serve/test_serve.py."""

from __future__ import annotations

import pytest

from rlhf.evaluation.judge import PROMPT, judge_summary, parse_ratings
from rlhf.evaluation.metrics import ASPECTS, METRICS
from rlhf.evaluation.report import LABELS

pytestmark = pytest.mark.no_ray


def test_ratings_are_read_from_the_four_lines_in_any_order_and_case():
    reply = "Helpfulness: 2\naccuracy: 5\nRELEVANCE = 4\nclarity - 3"
    assert parse_ratings(reply) == {"accuracy": 5, "relevance": 4, "clarity": 3, "helpfulness": 2}
    assert parse_ratings("**accuracy**: 1, relevance: 1, clarity: 2, helpfulness: 1") == {
        "accuracy": 1, "relevance": 1, "clarity": 2, "helpfulness": 1}


@pytest.mark.parametrize("reply", [
    "",
    "accuracy: 5\nrelevance: 4\nclarity: 3",  # helpfulness missing
    "accuracy: 6\nrelevance: 4\nclarity: 3\nhelpfulness: 2",  # 6 is off the scale
    "accuracy: 0\nrelevance: 4\nclarity: 3\nhelpfulness: 2",
    "accuracy: 45\nrelevance: 4\nclarity: 3\nhelpfulness: 2",  # not a single digit
    "I would rate it highly on every aspect.",
])
def test_a_reply_without_all_four_ratings_is_unparsed(reply):
    assert parse_ratings(reply) is None


def test_summary_means_cover_parsed_replies_only():
    ratings = [{"accuracy": 5, "relevance": 4, "clarity": 3, "helpfulness": 2},
               None,
               {"accuracy": 2, "relevance": 2, "clarity": 4, "helpfulness": 5}]
    # By hand: accuracy (5+2)/2, relevance (4+2)/2, clarity (3+4)/2, helpfulness (2+5)/2.
    assert judge_summary(ratings) == {"accuracy": 3.5, "relevance": 3.0, "clarity": 3.5, "helpfulness": 3.5,
                                      "judged": 2, "unparsed": 1}
    assert judge_summary([None, None]) == {**dict.fromkeys(ASPECTS), "judged": 0, "unparsed": 2}


def test_the_judge_asks_for_the_review_pages_aspects_and_the_report_shows_them():
    for aspect in ASPECTS:
        assert f"\n{aspect}: N" in PROMPT
        assert f"judge_{aspect}" in METRICS and f"judge_{aspect}" in LABELS
    text = PROMPT.format(question="Q?", reference="R", answer="A")
    assert "QUESTION:\nQ?" in text and "REFERENCE ANSWER:\nR" in text and "ASSISTANT'S ANSWER:\nA" in text
