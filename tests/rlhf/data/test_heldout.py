"""Held-out questions never reach a training stage: normalised matching, counts, loud failures."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rlhf.config.tree import load_config
from rlhf.data.heldout import ContaminationError, Heldout, heldout_from, question_key

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

GYM = "gym:chain_sum?min_terms=2&max_terms=2&max_digits=1"


def test_question_key_ignores_case_spacing_punctuation_and_unicode_form():
    assert question_key("What is  2 + 3?") == question_key("what is 2 3") == "what is 2 3"
    assert question_key("Ｗｈａｔ is ２+３ ?") == "what is 2 3"  # full-width forms (NFKC)
    assert question_key("STRASSE") == question_key("straße")  # casefold, not lower
    assert question_key("What is 2 + 3?") != question_key("What is 2 + 4?")


def test_drop_counts_and_keeps_the_other_rows_in_order():
    held = Heldout(frozenset({question_key("What is 1 + 1?")}), "eval.jsonl")
    table = pa.table({"question": ["what is 1+1", "What is 2 + 2?", "WHAT IS 1 + 1 ?", "Name a river."],
                      "answer": ["2", "4", "2", "Nile"]})
    kept, dropped = held.drop(table, "question")
    assert dropped == 2
    assert kept.column("question").to_pylist() == ["What is 2 + 2?", "Name a river."]
    assert kept.column("answer").to_pylist() == ["4", "Nile"]
    assert held.check(kept.column("question").to_pylist(), "sft") == 0


def test_overlap_left_is_an_error_naming_the_stage_and_the_question():
    held = Heldout(frozenset({question_key("Who wrote Hamlet?")}), "gym:qa")
    expected = r"rl prompts: 1 training questions .*from gym:qa \('who wrote hamlet'\)"
    with pytest.raises(ContaminationError, match=expected):
        held.check(["Why is the sky blue?", "who wrote hamlet"], "rl prompts")


def test_heldout_from_gym_a_qa_file_and_a_prompts_file(tmp_path):
    gym = heldout_from(GYM, 40, 12345)
    assert 0 < len(gym) <= 40  # generated questions repeat: the set holds each once
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in ["A?", "B?", "a ?"]))
    assert heldout_from(str(qa), 0, 0).keys == {"a", "b"}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "C?", "reference": "c"}) + "\n" + json.dumps({"question": "D?"}) + "\n")
    assert heldout_from(str(prompts), 0, 0).keys == {"c", "d"}
    assert len(heldout_from("", 10, 0)) == 0


def test_rl_prompts_drop_the_evaluation_questions():
    from rlhf.data.prompts import training_prompts

    cfg = load_config(None, ["model.path=tiny", f"data.train={GYM}", "data.gym_size=200",
                             f"eval.data={GYM}", "eval.size=30", "eval.seed=7"])
    table, dropped = training_prompts(cfg)
    held = heldout_from(GYM, 30, 7)
    assert dropped > 0 and not held.overlap(table.column("question").to_pylist())
    cfg = load_config(None, ["model.path=tiny", f"data.train={GYM}", "data.gym_size=200", "eval.data="])
    assert training_prompts(cfg)[1] == 0  # no evaluation set: nothing to hold out


def test_sft_and_pair_jobs_count_what_they_dropped(tmp_path, tiny_model_dir):
    from rlhf.supervised.inputs import pair_job, sft_job

    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"sft.data={GYM}", "data.gym_size=120",
                             f"eval.data={GYM}", "eval.size=20", "eval.seed=3", "sft.val_fraction=0.2",
                             "rm.val_fraction=0.3"])
    job = sft_job(cfg, tiny_model_dir, tmp_path / "sft")
    assert job.heldout_dropped > 0
    assert len(job.train) + len(job.val) == 120 - job.heldout_dropped
    held = heldout_from(GYM, 20, 3)
    question = next(iter(held.keys))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": question.upper() + "?", "chosen": "1", "rejected": "no"}]
    rows += [{"prompt": f"Name river number {i}.", "chosen": "Nile", "rejected": "blue"} for i in range(12)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = pair_job("rm", cfg, tiny_model_dir, [str(pairs)], tmp_path / "rm")
    assert job.heldout_dropped == 1 and len(job.train) + len(job.val) == 12
