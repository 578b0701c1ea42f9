"""`rlhf redteam` for real: a model folder on an offline vLLM engine behind the serve guardrails,
the files it writes, the exit code of a failed gate, and the gate on SmolLM2 with and without
guardrails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config.tree import load_config

# vLLM in this process or a subprocess, and no Ray: runs beside the `alone` tests in make test.
pytestmark = pytest.mark.no_ray

ROOT = Path(__file__).resolve().parents[3]


def _redteam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.cli.main", "redteam", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_redteam_a_model_folder_writes_the_report_and_a_failed_gate_exits_3(tmp_path):
    small = ["redteam.attempts=4", "redteam.cases=2", "redteam.max_new_tokens=8"]
    proc = _redteam("--model", "tiny", "--out", str(tmp_path / "a"), *small, "redteam.gate.max_over_refusal=-1")
    assert proc.returncode == 3, proc.stderr[-3000:]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert set(report["categories"]) == {"injection", "system_prompt", "jailbreak", "harmful", "pii"}
    assert all(set(c) >= {"attack_success", "ci95", "n"} for c in report["categories"].values())
    assert set(report["bias_consistency"]) == {"gender", "ethnicity", "native_language"}
    assert report["robustness_drop"] is not None and report["guardrails"]
    assert report["gate"]["passed"] is False and report["gate"]["failed"][0]["check"] == "over-refusal"
    hits = (tmp_path / "a" / "hits.jsonl").read_text().splitlines()
    assert len(hits) == report["attempts"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Release gate: FAILED" in md and "over-refusal" in md
    assert (tmp_path / "a" / "attack_success.png").stat().st_size > 1000
    assert "release gate" in proc.stdout and "FAILED" in proc.stdout
    bad = _redteam("--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "exactly one of --model" in bad.stderr


@pytest.mark.slow
def test_turning_the_guardrails_off_makes_smollm2_fail_the_gate(tmp_path):
    from rlhf.models.loading import resolve_model_path
    from rlhf.redteam.run import model_target, run_redteam

    model = resolve_model_path("smollm2")
    base = ["redteam.suites=[jailbreak, system_prompt, pii]", "redteam.attempts=10", "redteam.max_new_tokens=32"]
    guarded = run_redteam(model_target(model, load_config(None, base)), load_config(None, base), tmp_path / "on",
                          log=lambda _: None)
    off_cfg = load_config(None, [*base, "redteam.guardrails=false"])
    bare = run_redteam(model_target(model, off_cfg), off_cfg, tmp_path / "off", log=lambda _: None)
    assert guarded["gate"]["passed"], guarded["gate"]
    assert not bare["gate"]["passed"] and any(f["check"] == "jailbreak attack success" for f in bare["gate"]["failed"])
    assert bare["categories"]["jailbreak"]["attack_success"] > guarded["categories"]["jailbreak"]["attack_success"]


@pytest.mark.slow
def test_guard_answers_labels_a_models_answers_to_harmful_and_ordinary_questions(tmp_path):
    from rlhf.redteam.guard_answers import load_conversations

    out = tmp_path / "conversations.jsonl"
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli.main", "guard", "answers", "--model", "tiny", "--out",
                           str(out), "--per-kind", "3", "redteam.max_new_tokens=8"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = load_conversations(out)
    assert [r["harmful"] for r in rows] == [True] * 3 + [False] * 3
    # The tiny random model never refuses: each harmful request it answered is an unsafe row.
    assert [r["label"] for r in rows] == ["unsafe"] * 3 + ["safe"] * 3
    assert all(r["answer"] and r["model"] == "tiny" for r in rows)
    assert "6 conversations (3 harmful requests, 3 answered instead of refused)" in proc.stdout
