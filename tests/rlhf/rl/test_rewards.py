"""Rule rewards on hand-written cases."""

import pytest

from rlhf.config.training import RewardConfig
from rlhf.rl.rewards import (
    RULES,
    combine,
    extract_answer,
    normalize_answer,
    numeric_answer,
    parse_number,
    validate_rules,
)

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

em = RULES["exact_match"]
f1 = RULES["token_f1"]
choice = RULES["choice"]
length = RULES["length"]
fmt = RULES["format"]


def test_normalize_answer_like_squad():
    assert normalize_answer("  The Eiffel  Tower! ") == "eiffel tower"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the result is \\boxed{1,000} overall", "1,000"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("Thus, the answer is 3.5. Because of x.", "3.5"),
        ("Answer: Paris", "Paris"),
        ("The final answer is: **42**.", "42"),
        ("no marker here 17", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_parse_and_numeric_answer():
    assert parse_number("1,000") == 1000.0
    assert parse_number("$3.0.") == 3.0
    assert parse_number("3/4") == 0.75
    assert parse_number("1,2") is None
    assert parse_number("Paris") is None
    assert numeric_answer("It costs 5 then 12 dollars") == 12.0
    assert numeric_answer("The answer is 1,000 dollars.") == 1000.0
    assert numeric_answer("no numbers") is None


@pytest.mark.parametrize(
    "response,reference,score",
    [
        ("The answer is 1,000.", "1000", 1.0),
        ("We get \\boxed{72}.", "72", 1.0),
        ("so 3.0", "3", 1.0),  # last number when the reference is numeric
        ("first 3 then 4", "3", 0.0),  # only the last number counts
        ("The answer is 4, not 3", "3", 0.0),  # the stated answer wins over later numbers
        ("35", "3.5", 0.0),  # numbers never compare as normalised text
        ("the Eiffel Tower.", "Eiffel Tower", 1.0),
        ("Answer: the eiffel tower", "Eiffel Tower", 1.0),
        ("Paris, I think", "Paris", 0.0),
        ("The answer is 72", "Natalia sold 48 clips...\n#### 72", 1.0),  # GSM8K-style reference
        ("anything", None, 0.0),
    ],
)
def test_exact_match(response, reference, score):
    assert em(response, reference) == score


def test_token_f1_by_hand():
    # pred [eiffel, tower, paris] vs gold [eiffel, tower]: p = 2/3, r = 1, F1 = 0.8
    assert f1("the Eiffel tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    # pred [eiffel, tower, in, paris]: p = 2/4, r = 1, F1 = 2/3
    assert f1("the Eiffel tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    assert f1("London", "Eiffel Tower") == 0.0
    assert f1("The answer is Eiffel Tower.", "Eiffel Tower") == 1.0  # extracted answer
    assert f1("", "") == 1.0


@pytest.mark.parametrize(
    "response,reference,score",
    [
        ("B", "B", 1.0),
        ("(B)", "B", 1.0),
        ("b.", "(B)", 1.0),
        ("B) London", "B", 1.0),
        ("The answer is (C).", "B", 0.0),
        ("London", "B", 1.0),  # by the choice's text
        ("London", "London", 1.0),
        ("Paris or London", "B", 0.0),  # naming several options is no answer
        ("A cat", "A", 0.0),  # a leading article is not a letter pick
        ("Answer: A", "A", 1.0),
    ],
)
def test_choice(response, reference, score):
    assert choice(response, reference, choices=["Paris", "London", "Rome"]) == score


def test_choice_without_choices_compares_letters():
    assert choice("(d)", "D") == 1.0
    assert choice("C", "D") == 0.0


def test_length_penalty():
    assert length("", None, n_tokens=32, target_length=32) == 0.0
    assert length("", None, n_tokens=16, target_length=32) == -0.5
    assert length("", None, n_tokens=100, target_length=32) == -1.0
    assert length("one two three four", None, target_length=8) == -0.5  # whitespace fallback


def test_format_rule():
    assert fmt("Paris is the capital of France.", None) == 1.0
    assert fmt("The total is 42", None) == 1.0
    assert fmt("The capital of France is", None) == 0.5  # cut off mid-sentence
    assert fmt("I am not sure " * 3 + "really.", None) == 0.5  # a 4-gram three times
    assert fmt("I am not sure " * 3, None) == 0.0
    assert fmt("   ", None) == 0.0


def test_combine_weights_and_components():
    total, comps = combine(
        "The answer is Paris.", "Paris", {"exact_match": 1.0, "format": 0.5, "length": 0.1},
        n_tokens=16, target_length=32,
    )
    assert comps == {"reward/exact_match": 1.0, "reward/format": 1.0, "reward/length": -0.5}
    assert total == pytest.approx(1.0 + 0.5 - 0.05)


def test_combine_rejects_unknown_rules_and_context():
    with pytest.raises(ValueError, match="exact_match"):  # lists the valid rules
        combine("x", "y", {"exact_mtach": 1.0})
    with pytest.raises(ValueError):
        validate_rules({"bleu": 1.0})
    with pytest.raises(TypeError, match="n_tokens"):
        combine("x", "y", {"length": 1.0}, n_token=3)
    validate_rules(RewardConfig().rules)  # the default config names real rules
