"""Model-based answer metrics: MiniLM relevance and perplexity under the base model."""

from __future__ import annotations

import math

import pytest

from rlhf.evaluation.relevance import SentenceEncoder, perplexities, similarities


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_an_answer_on_topic_is_more_relevant_than_one_off_topic(encoder):
    question = "How many months of warranty does the kettle come with?"
    on, off = similarities(encoder, ["The kettle has an 18-month warranty.", "Bananas are yellow fruit."],
                           [question, question])
    assert -1.0 <= off < on <= 1.0
    same = similarities(encoder, ["teal"], ["teal"])[0]
    assert same == pytest.approx(1.0, abs=1e-5)
    assert similarities(encoder, ["  "], ["teal"]) == [None]  # an empty answer has no relevance


def test_perplexity_is_exp_of_minus_the_mean_logprob():
    assert perplexities([[math.log(0.5), math.log(0.5)], [], [0.0]]) == [pytest.approx(2.0), None, 1.0]
    assert perplexities(None) == []
