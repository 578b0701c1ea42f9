"""`rlhf round --when`: a round is due when enough new feedback arrived since the last one."""

from __future__ import annotations

import json
import os
import time

import pytest
from typer.testing import CliRunner

from rlhf.config.typed_yaml import ConfigError
from rlhf.human.feedback import AnswerRecord, FeedbackStore
from rlhf.lifecycle.triggers import due, parse_when

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _store(tmp_path, thumbs: list[str]) -> FeedbackStore:
    store = FeedbackStore(tmp_path / "fb.sqlite")
    for i, t in enumerate(thumbs):
        store.record_answer(AnswerRecord(f"a{i}", "ask", "qa@v1", f"q{i}", "x", "stop"))
        store.add_feedback(f"a{i}", thumbs=t)
    return store


def test_when_counts_only_what_came_after_the_last_round(tmp_path):
    store = _store(tmp_path, ["down", "down", "up"])
    ok, why, counts = due("thumbs_down>=2", store, tmp_path / "rounds")
    assert ok and counts == {"thumbs_down": 2} and why == "thumbs_down 2 >= 2 since the last round"
    report = tmp_path / "rounds" / "round-001" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    os.utime(report, (time.time() + 1, time.time() + 1))  # the round finished after that feedback
    ok, why, counts = due("thumbs_down>=2, feedback>=1", store, tmp_path / "rounds")
    assert not ok and counts == {"thumbs_down": 0, "feedback": 0}
    assert why == "thumbs_down 0 < 2; feedback 0 < 1 since the last round"
    store.close()


@pytest.mark.parametrize("spec", ["feedback>50", "likes>=3", "feedback>=x", ""])
def test_a_bad_condition_names_itself_and_the_counts(spec):
    with pytest.raises(ConfigError, match="--when: cannot read.*feedback, thumbs_down, reviews"):
        parse_when(spec)


def test_round_when_not_due_exits_cleanly_before_training(tmp_path, tiny_model_dir):
    from rlhf.cli.main import app

    _store(tmp_path, ["up"]).close()
    config = tmp_path / "round.yaml"
    config.write_text(json.dumps({"model": {"path": tiny_model_dir},
                                  "serve": {"feedback_db": str(tmp_path / "fb.sqlite")},
                                  "review": {"run_dir": str(tmp_path / "rounds")}}))
    result = CliRunner().invoke(app, ["round", str(config), "--when", "thumbs_down>=1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "not due: thumbs_down 0 < 1 since the last round" in result.output
    assert not (tmp_path / "rounds").exists()
    bad = CliRunner().invoke(app, ["round", str(config), "--when", "likes>=1"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "cannot read 'likes>=1'" in bad.output
