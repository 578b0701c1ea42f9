"""`rlhf eval`: scoring against hand-computed numbers, the bootstrap, the report files, and
end-to-end runs on tiny models through the CLI (vLLM in its own process)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhf.cli.main import app
from rlhf.config.tree import Config
from rlhf.data.readers import DataError
from rlhf.evaluation.heldout import eval_question, load_eval_rows
from rlhf.evaluation.metrics import bootstrap_ci, compare, is_refusal, repetition, score_answers, wins
from rlhf.evaluation.report import summary_rows, write_report

# vLLM in this process or a subprocess, and no Ray: runs beside the `alone` tests in make test.
pytestmark = pytest.mark.no_ray

ROOT = Path(__file__).resolve().parents[3]

# question, reference, choices, the answer we pretend the model gave
FIXED = [
    ("What is 2 plus 3?", "5", None, "The answer is 5."),
    ("What is the capital of France?", "Paris", None, "Paris, France"),
    ("How many legs does a spider have?", "8", None, "8 legs"),
    ("Which planet is largest?", "Jupiter", ["Mars", "Jupiter", "Venus"], "B"),
    ("Is water wet?", "yes", ["yes", "no"], "I'm sorry, I cannot answer that."),
    ("Name a primary colour.", "red", None, "red blue red blue red blue red"),
    ("Pick the even number.", "4", ["3", "4", "7"], "The answer is 4"),
]
# By hand, per question (open rows: EM, F1; closed rows: choice):
#   1 EM 1 (extracted "5"), F1 1 (extracted answer), 4 words
#   2 EM 0, F1 2/3 ("paris france" vs "paris": P 1/2, R 1), 2 words
#   3 EM 1 (last number 8), F1 2/3 ("8 legs" vs "8"), 2 words
#   4 choice 1 (letter B = Jupiter), 1 word
#   5 choice 0, refusal, 6 words
#   6 EM 0, F1 1/4 (P 1/7, R 1), repetition 2/4 (4-grams rbrb brbr rbrb brbr), 7 words
#   7 choice 1 (extracted "4" is the text of option B), 4 words
EXPECTED = {
    "exact_match": 2 / 4,
    "token_f1": (1 + 2 / 3 + 2 / 3 + 1 / 4) / 4,
    "choice_accuracy": 2 / 3,
    "accuracy": 4 / 7,
    "refusal": 1 / 7,
    "repetition": 0.5 / 7,
    "length": 26 / 7,
    "n": 7,
    "n_open": 4,
    "n_closed": 3,
}


@pytest.fixture
def qa_file(tmp_path) -> Path:
    path = tmp_path / "heldout.jsonl"
    lines = []
    for q, ref, choices, _ in FIXED:
        row = {"question": q, "answer": ref}
        if choices:
            row["choices"] = choices
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def fixed_rows(path: Path) -> list[dict]:
    rows, info = load_eval_rows(str(path), Config())
    assert info["kind"] == "qa" and info["evaluated"] == len(FIXED)
    return rows


# ----------------------------------------------------------------------------- scoring by hand


def test_score_answers_matches_hand_computation(qa_file):
    rows = fixed_rows(qa_file)
    per_q, agg = score_answers(rows, [a for *_, a in FIXED], n_boot=200)
    for key, value in EXPECTED.items():
        assert agg[key] == pytest.approx(value), key
    assert [q["accuracy"] for q in per_q] == [1, 0, 1, 1, 0, 0, 1]
    assert [q["token_f1"] for q in per_q][:3] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert per_q[3]["exact_match"] is None and per_q[3]["token_f1"] is None  # closed: choice only
    assert per_q[0]["choice_accuracy"] is None
    assert per_q[3]["choices"] == ["Mars", "Jupiter", "Venus"]
    assert agg["rm_score"] is None and agg["logprob"] is None  # no model passes here
    lo, hi = agg["ci95"]["accuracy"]
    assert 0 <= lo <= agg["accuracy"] <= hi <= 1


def test_extra_metrics_and_token_lengths(qa_file):
    rows = fixed_rows(qa_file)
    extra = {"rm_score": [1.0, 2.0, 3.0, None, 5.0, 6.0, 7.0], "logprob": [-1.0] * 7}
    per_q, agg = score_answers(rows, [a for *_, a in FIXED], n_tokens=[10] * 7, extra=extra, n_boot=100)
    assert agg["length"] == 10
    assert agg["rm_score"] == pytest.approx(24 / 6)  # None is skipped, not counted as 0
    assert agg["logprob"] == -1.0 and per_q[2]["rm_score"] == 3.0


def test_proxies():
    assert repetition("a b c d a b c d") == pytest.approx(1 / 5)  # abcd bcda cdab dabc abcd
    assert repetition("too short") == 0.0
    for text in ("I'm sorry, I can't help with that.", "As an AI, I have no opinion.", "I cannot answer that"):
        assert is_refusal(text), text
    for text in ("The answer is 5.", "Sorry state of affairs: 12", "Paris"):
        assert not is_refusal(text), text


def test_prompts_file_with_reference_column(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"question": "1+1?", "reference": "2"}\n{"question": "2+2?"}\n')
    rows, info = load_eval_rows(str(path), Config())
    assert info["kind"] == "prompts" and info["skipped_no_reference"] == 1
    assert rows == [{"question": "1+1?", "reference": "2", "choices": None, "context": None}]
    _, agg = score_answers(rows, ["2"], n_boot=10)
    assert agg["accuracy"] == 1.0


def test_question_shows_context_and_options():
    text = eval_question({"question": "Which?", "choices": ["x", "y"], "context": "Some facts."})
    assert text == "Some facts.\n\nWhich?\n\nOptions:\nA. x\nB. y"
    assert eval_question({"question": "Plain?", "choices": None, "context": None}) == "Plain?"


# ----------------------------------------------------------------------------- no references


def test_file_without_references_explains_what_it_needs(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question": "What is 1+1?"}\n{"question": "What is 2+2?"}\n')
    with pytest.raises(DataError) as err:
        load_eval_rows(str(path), Config())
    message = str(err.value)
    assert "reference answer" in message and "`answer`" in message and "`reference`" in message


def test_cli_eval_without_references_fails_before_loading_a_model(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question": "What is 1+1?"}\n')
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "no-model"), "--data", str(path),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "reference answer" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_hand_checkable_cases():
    # Two values 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5th percentile is 0 and the 97.5th is 1.
    assert bootstrap_ci([0.0, 1.0], n=2000, seed=0) == (0.5, 0.0, 1.0)
    # Constant differences have a zero-width interval; pairing removes the spread of a and b.
    assert bootstrap_ci([1, 2, 3], [0, 1, 2], n=500) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([5, 5, 5]) == (5.0, 5.0, 5.0)
    # Missing values drop their pair.
    assert bootstrap_ci([1.0, None, 3.0], [0.0, 0.0, None])[0] == 1.0
    assert all(math.isnan(x) for x in bootstrap_ci([None, float("nan")]))


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = [float(i) for i in range(10)]
    first = bootstrap_ci(values, n=1000, seed=3)
    assert first == bootstrap_ci(values, n=1000, seed=3)
    mean, lo, hi = first
    assert mean == 4.5 and 0 <= lo < mean < hi <= 9
    # Standard error of the mean is sd/sqrt(n) = 2.87/3.16 = 0.91: the interval is about +-1.8.
    assert 1.2 < mean - lo < 2.4 and 1.2 < hi - mean < 2.4


# ----------------------------------------------------------------------------- comparing


def test_win_rate_judges():
    model = [{"accuracy": 1, "token_f1": None}, {"accuracy": 0, "token_f1": 0.5}, {"accuracy": 0, "token_f1": 0.2}]
    base = [{"accuracy": 0, "token_f1": None}, {"accuracy": 0, "token_f1": 0.1}, {"accuracy": 0, "token_f1": 0.2}]
    assert wins(model, base) == ([1.0, 1.0, 0.5], "accuracy, then token_f1")
    for m, b, (sm, sb) in zip(model, base, [(0.1, 0.3), (2.0, 2.0), (1.0, 0.0)]):
        m["rm_score"], b["rm_score"] = sm, sb
    assert wins(model, base) == ([0.0, 0.5, 1.0], "reward_model")


def test_compare_with_itself_is_all_ties_and_zero_differences(qa_file):
    per_q, _ = score_answers(fixed_rows(qa_file), [a for *_, a in FIXED], n_boot=50)
    summary, per_question = compare(per_q, per_q, kl=[0.0] * len(per_q), n_boot=100)
    assert summary["win_rate"] == 0.5 and summary["kl_to_baseline"] == 0.0
    assert all(d == {"mean": 0.0, "ci95": [0.0, 0.0]} for d in summary["diff"].values())
    assert per_question["win"] == [0.5] * len(per_q)


def test_report_files_with_and_without_baseline(qa_file, tmp_path):
    rows = fixed_rows(qa_file)
    per_q, agg = score_answers(rows, [a for *_, a in FIXED], n_boot=50)
    result = {**agg, "model": "m", "data": {"source": str(qa_file), "evaluated": 7, "quarantined": 0,
                                            "skipped_no_reference": 0}, "max_new_tokens": 8, "bootstrap": 50}
    files = write_report(dict(result), per_q, None, tmp_path / "solo")
    assert all(Path(p).is_file() for p in files.values())
    assert "| exact match (open-ended) | 0.500 |" in Path(files["report.md"]).read_text()

    base_q, base_agg = score_answers(rows, ["5", "Paris", "6", "A", "yes", "red", "3"], n_boot=50)
    summary, _ = compare(per_q, base_q, kl=None, n_boot=50)
    result.update(summary, baseline={**base_agg, "model": "b"})
    files = write_report(result, per_q, base_q, tmp_path / "pair")
    report = json.loads(Path(files["report.json"]).read_text())
    assert report["diff"]["accuracy"]["mean"] == pytest.approx(4 / 7 - 4 / 7)
    assert report["baseline"]["exact_match"] == pytest.approx(3 / 4)  # 5, Paris, red right; 6 wrong
    lines = Path(files["answers.jsonl"]).read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[4])["baseline"]["answer"] == "yes"
    header, table = summary_rows(report)
    assert header[2] == "baseline" and any(r[0].startswith("win rate") for r in table)
    assert "different vocabularies" in Path(files["report.md"]).read_text()


# ----------------------------------------------------------------------------- end to end (tiny models)


E2E_QUESTIONS = [
    {"question": "What is 12 plus 30?", "answer": "42"},
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "How many days are in a week?", "answer": "7"},
    {"question": "Is the sky blue?", "answer": "yes", "choices": ["yes", "no"]},
    {"question": "Which is a river?", "answer": "Nile", "choices": ["Nile", "Everest", "Sahara"]},
    {"question": "What is 3 times 4?", "answer": "12"},
]
E2E_OVERRIDES = ["eval.max_new_tokens=12", "eval.bootstrap=200", "model.max_prompt_tokens=64"]


def rlhf_eval(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rlhf.cli.main", "eval", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from rlhf.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval")
    data = root / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in E2E_QUESTIONS))
    return root, str(build_tiny_model(root / "m0")), str(build_tiny_model(root / "m1", seed=1)), str(data)


@pytest.mark.slow
def test_eval_against_another_model_writes_the_report(e2e):
    root, m0, m1, data = e2e
    out = root / "vs-m1"
    proc = rlhf_eval("--model", m0, "--baseline", m1, "--data", data, "--out", str(out),
                     *E2E_OVERRIDES, f"eval.reward_model={m0}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "report:" in proc.stdout and "report.md" in proc.stdout
    assert "win rate" in proc.stdout
    for name in ("report.json", "report.md", "answers.jsonl", "metrics.png", "lengths.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "exact_match", "token_f1", "choice_accuracy", "rm_score", "logprob", "length",
                "repetition", "refusal", "n", "ci95", "baseline", "diff", "win_rate", "kl_to_baseline"):
        assert key in report, key
    assert report["n"] == 6 and report["n_closed"] == 2 and report["baseline"]["n"] == 6
    assert report["win_judge"] == "reward_model" and 0 <= report["win_rate"] <= 1
    assert math.isfinite(report["kl_to_baseline"]) and report["kl_to_baseline"] != 0
    assert report["logprob"] < 0 and 0 < report["length"] <= 12
    diff = report["diff"]["accuracy"]
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert {"question", "reference", "answer", "accuracy", "win", "kl", "baseline"} <= set(rows[0])


@pytest.mark.slow
def test_eval_against_itself_has_zero_kl_and_even_win_rate(e2e):
    root, m0, _, data = e2e
    out = root / "vs-self"
    proc = rlhf_eval("--model", m0, "--baseline", m0, "--data", data, "--out", str(out), *E2E_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert abs(report["kl_to_baseline"]) < 1e-4
    assert report["win_rate"] == 0.5 and report["win_judge"] == "accuracy, then token_f1"
    for name, d in report["diff"].items():
        assert d["mean"] == pytest.approx(0.0, abs=1e-4), name
        assert d["ci95"][0] == pytest.approx(0.0, abs=1e-4) and d["ci95"][1] == pytest.approx(0.0, abs=1e-4)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert all(r["answer"] == r["baseline"]["answer"] for r in rows)
