"""Generated support-desk QA: answers that follow from the sheet, disjoint splits, clear errors."""

from __future__ import annotations

import random
import re

import pytest

from rlhf.data.heldout import heldout_from, question_key
from rlhf.data.readers import DataError
from rlhf.data.synthetic import split_of, support_question, synthetic_rows
from rlhf.data.tables import load_source

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _sheet_and_ask(question: str) -> tuple[str, str]:
    sheet, _, ask = question.partition("\n\n")
    return sheet, ask


def test_every_answer_follows_from_its_sheet():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        row = support_question(rng)
        seen.add(row["type"])
        sheet, ask = _sheet_and_ask(row["question"])
        assert sheet.startswith("Product sheet: The ") and ask
        name = re.match(r"Product sheet: The (.+?) is an? ", sheet).group(1)
        assert name in ask  # the question is about the product on the sheet
        if row["type"] == "yes_no":
            assert row["reference"] in ("yes", "no") and ask.endswith("Answer yes or no.")
            system = re.match(r"Does the app of the .+ work with (\w+)\?", ask)
            if system:  # checked against the sheet's own words
                works = re.search(r"Its app works with ([\w ]+)\.", sheet).group(1).split(" and ")
                assert (system.group(1) in works) == (row["reference"] == "yes")
            colour = re.match(r"Is the .+ sold in (\w+)\?", ask)
            if colour:
                assert (f"sold in {colour.group(1)} only" in sheet) == (row["reference"] == "yes")
            months = re.match(r"Is the warranty of the .+ longer than (\d+) months\?", ask)
            if months:
                warranty = int(re.search(r"Its warranty lasts (\d+) months", sheet).group(1))
                assert (warranty > int(months.group(1))) == (row["reference"] == "yes")
        elif row["type"] == "choice":
            options = re.search(r"Options: ([\w, ]+)\.", ask).group(1).split(", ")
            assert options.count(row["reference"]) == 1 and row["reference"] in sheet
        else:
            assert re.search(rf"\b{re.escape(row['reference'])}\b", sheet), (sheet, row)
    assert seen == {"open", "yes_no", "choice"}


def test_yes_no_answers_are_balanced_so_a_constant_answer_is_at_chance():
    asks = [(r["question"].partition("\n\n")[2].split(" the ")[0], r["reference"])
            for r in synthetic_rows("support", 3000, 0) if r["type"] == "yes_no"]
    for kind in ("Does", "Is"):  # works with; sold in / warranty longer than
        answers = [ref for k, ref in asks if k == kind]
        assert len(answers) > 300 and 0.45 < answers.count("yes") / len(answers) < 0.55, kind


def test_splits_share_no_product_and_so_no_question():
    train = synthetic_rows("support", 1500, 0)
    held = heldout_from("synth:support?split=eval", 300, 12345)
    assert len(held) == 300  # no repeats: memorising is not the answer
    assert not held.overlap(r["question"] for r in train)
    for rows, split in ((train, "train"), (synthetic_rows("support?split=eval", 100, 1), "eval")):
        names = {re.match(r"Product sheet: The (.+?) is an? ", r["question"]).group(1) for r in rows}
        assert {split_of(n) for n in names} == {split}


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    assert synthetic_rows("support", 20, 3) == synthetic_rows("support", 20, 3)
    a = {question_key(r["question"]) for r in synthetic_rows("support", 50, 3)}
    b = {question_key(r["question"]) for r in synthetic_rows("support", 50, 4)}
    assert not a & b


def test_load_source_gives_prompts_and_qa_tables():
    qa = load_source("synth:support", "qa", None, 10, 0).table
    prompts = load_source("synth:support", "prompts", None, 10, 0).table
    assert qa.num_rows == prompts.num_rows == 10
    assert qa.column("answer").to_pylist() == prompts.column("reference").to_pylist()


@pytest.mark.parametrize("spec, message", [
    ("synth:helpdesk", r"unknown domain 'helpdesk'; valid: support"),
    ("synth:support?split=test", r"split must be one of train, eval, got 'test'"),
    ("synth:support?size=3", r"unknown option\(s\) size; valid: split"),
])
def test_bad_specs_name_what_is_valid(spec, message):
    with pytest.raises(DataError, match=message):
        load_source(spec, "prompts", None, 5, 0)
