"""The pipeline as artifact stages: manifests, lineage checks, reruns that skip finished work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config.tree import load_config
from rlhf.pipeline.runner import Pipeline, StageError

ROOT = Path(__file__).resolve().parents[3]


def test_a_stage_whose_input_artifact_is_missing_names_it(tmp_path, tiny_model_dir):
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "pipeline.stages=[rm]"])
    pipe = Pipeline(cfg, tmp_path)
    with pytest.raises(StageError, match="'pairs' artifact"):
        pipe.need("rm", "pairs")


def test_an_artifact_from_another_model_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "manifest.json").write_text(json.dumps(
        {"stage": "pairs", "base_model": "/some/other/model", "output": "pairs.parquet", "output_hash": "x"}))
    cfg = load_config(None, [f"model.path={tiny_model_dir}"])
    with pytest.raises(StageError, match="/some/other/model"):
        Pipeline(cfg, tmp_path).need("rm", "pairs")


def test_unknown_stage_is_a_config_error(tmp_path, tiny_model_dir):
    from rlhf.config.typed_yaml import ConfigError

    with pytest.raises(ConfigError, match="pipeline.stages: unknown value 'polish'; valid: sft, pairs"):
        load_config(None, [f"model.path={tiny_model_dir}", "pipeline.stages=[sft, polish]"])


def test_a_rerun_stage_reads_only_earlier_stages_artifacts(tmp_path, tiny_model_dir):
    from rlhf.pipeline.runner import Artifact

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "pipeline.stages=[sft, rl, eval]"])
    pipe = Pipeline(cfg, tmp_path)
    for stage in ("sft", "rl"):
        pipe.artifacts[stage] = Artifact(stage, tmp_path / stage, {"output": "model"})
    pipe.running = "rl"  # last run's rl output must not become this rl run's starting policy
    assert pipe.current_policy() == str(tmp_path / "sft" / "model")
    pipe.running = "eval"
    assert pipe.current_policy() == str(tmp_path / "rl" / "model")


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_a_rerun_skips_every_unchanged_stage(tmp_path):
    run_dir = tmp_path / "pipe"
    cmd = [sys.executable, "-m", "rlhf.cli.main", "pipeline", "examples/tiny-pipeline.yaml", "--run-dir", str(run_dir),
           f"pipeline.registry={tmp_path / 'registry'}"]
    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert first.returncode in (0, 3), first.stderr[-4000:]  # 3: the red-team gate failed
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("heldout_accuracy_before", "heldout_accuracy_after", "heldout_accuracy_diff_ci95"):
        assert key in summary
    assert len(summary["heldout_accuracy_diff_ci95"]) == 2
    # The evaluation questions were dropped from every training stage's inputs, none left.
    assert summary["heldout_overlap"] == {"sft": 0, "pairs": 0, "rm": 0, "rl": 0}, summary
    assert summary["heldout_dropped"]["sft"] > 0 and summary["heldout_dropped"]["rl"] > 0, summary
    # The ladder: base, SFT and RL on the same questions; the last rung is the reported "after".
    ladder = summary["ladder"]
    assert [r["stage"] for r in ladder] == ["base", "sft", "rl"]
    assert all(r["n"] == summary["heldout_questions"] for r in ladder)
    assert ladder[0]["diff_vs_previous"] is None and len(ladder[2]["diff_vs_previous_ci95"]) == 2
    assert ladder[-1]["accuracy"] == pytest.approx(summary["heldout_accuracy_after"])
    assert ladder[0]["accuracy"] == pytest.approx(summary["heldout_accuracy_before"])
    assert "## Ladder" in (run_dir / "eval" / "report.md").read_text() and (run_dir / "eval" / "ladder.png").is_file()
    # The red team attacked the final model behind the guardrails; its gate says whether to ship.
    assert summary["releasable"] is (summary["redteam"]["passed"] is True)
    assert set(summary["redteam"]["categories"]) == {"injection", "system_prompt", "jailbreak", "harmful", "pii"}
    assert (run_dir / "redteam" / "hits.jsonl").is_file()
    # SFT on Ray Train lowered the validation loss, and its export is a plain HF folder.
    sft = json.loads((run_dir / "sft" / "manifest.json").read_text())["metrics"]
    assert sft["last"]["val/loss"] < sft["first"]["val/loss"] - 0.5, sft
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "sft" / "model")
    # The pairs stage probed the SFT model; the rl stage weighed its prompts by that probe.
    assert (run_dir / "pairs" / "pairs.probe.parquet").is_file() and (run_dir / "rl" / "prompts.parquet").is_file()
    rl = json.loads((run_dir / "rl" / "manifest.json").read_text())["metrics"]
    assert rl["prompts_from"] == "headroom" and rl["prompts"] > 0, rl
    for stage in ("sft", "pairs", "rm", "rl", "eval", "redteam"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["inputs"] and manifest["output_hash"] and manifest["seconds"] >= 0
    assert (run_dir / "eval" / "report.md").is_file()
    assert "held-out accuracy" in first.stdout
    # The final model is a registered candidate whose record carries the gates it met or failed.
    from rlhf.lifecycle.registry import Registry

    version = Registry(tmp_path / "registry").get("v1")
    assert version["status"] == "candidate" and version["source"] == "pipeline"
    assert version["redteam"]["passed"] is summary["redteam"]["passed"] and "diff_ci95" in version["evaluation"]
    assert set(version["data"]["stage_outputs"]) == {"sft", "pairs", "rm", "rl", "eval", "redteam"}

    # A rerun with one red-team setting changed: the five stages whose inputs are the same skip.
    changed = subprocess.run(cmd + ["redteam.seed=8", "redteam.gate.max_over_refusal=-1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=900, env=env)
    assert changed.stderr.count("skipped") == 5, changed.stderr[-3000:]  # only the changed stage reran
    assert changed.returncode == 3 and "not releasable" in changed.stderr, changed.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["releasable"] is False
