"""What a registered version records about where it came from: a pipeline run's final model
with its parent, input hashes, config, held-out result and red-team gate."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.lifecycle.registry import Registry


def pipeline_evaluation(summary: dict) -> dict:
    """Held-out accuracy before and after; failed when the model is measurably worse than the base."""
    lo, hi = summary["heldout_accuracy_diff_ci95"]
    passed = hi >= 0
    diff = summary["heldout_accuracy_diff"]
    why = "" if passed else f"held-out accuracy fell {diff:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
    return {"passed": passed, "why": why, "heldout_accuracy_before": summary["heldout_accuracy_before"],
            "heldout_accuracy_after": summary["heldout_accuracy_after"], "diff_ci95": [lo, hi],
            "questions": summary["heldout_questions"], "report": summary["report"],
            "answer_length": summary.get("heldout_answer_length"), "refusal": summary.get("heldout_refusal")}


def pipeline_redteam(summary: dict) -> dict | None:
    from rlhf.redteam.report import failures

    gate = summary.get("redteam")
    if gate is None:
        return None
    return {"passed": gate["passed"], "why": "" if gate["passed"] else failures(gate), "report": gate["report"]}


def register_pipeline(registry: Registry, run_dir: Path, parent: str | None = None) -> dict:
    """Register a finished pipeline's final model as a candidate version."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    data, config = {}, {}
    for manifest_path in sorted(run_dir.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        data[manifest["stage"]] = manifest["output_hash"]
        config[manifest["stage"]] = manifest["inputs"].get("config", {})
    return registry.register(summary["final_model"], source="pipeline", parent=parent,
                             data={"base_model": summary["base_model"], "stage_outputs": data}, config=config,
                             evaluation=pipeline_evaluation(summary), redteam=pipeline_redteam(summary))


def register_round(registry: Registry, report: dict) -> dict:
    """Register a review round's model (parent: the live version); promote it when the round was."""
    from rlhf.redteam.report import failures

    live = registry.live()
    gate = report.get("redteam")
    redteam = None if gate is None else {"passed": gate["passed"], "why": "" if gate["passed"] else failures(gate)}
    evaluation = {"passed": report["promoted"], "why": report["decision"], "metric": report["metric"],
                  "value": report["value"], "round": report["round"],
                  "answer_length": report.get("metrics", {}).get("length"),
                  "refusal": report.get("metrics", {}).get("refusal")}
    version = registry.register(report["model"], source=f"round {report['round']}",
                                parent=live["version"] if live else None,
                                data=report.get("data", {}), evaluation=evaluation, redteam=redteam)
    if report["promoted"]:
        version = registry.promote(version["version"], note=report["decision"])
    return version


def register_training(registry: Registry, run_dir: Path, cfg, parent: str | None = None) -> dict:
    """Register an `rlhf train` run's exported policy: its data, config and last step's numbers
    (no evaluation gate: `rlhf eval` judges it; the version is a candidate)."""
    from rlhf.config.typed_yaml import to_dict
    from rlhf.pipeline.runner import file_hash

    run_dir = Path(run_dir)
    spec = cfg.data.train
    data = {spec: file_hash(spec) if Path(spec).exists() else f"generated (seed {cfg.data.seed}, "
                                                                f"{cfg.data.gym_size} rows)"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    last = {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith(("reward/", "objective/", "step"))}
    return registry.register(run_dir / "model", source="train", parent=parent,
                             data={"base_model": cfg.model.path, "inputs": data, "run": str(run_dir)},
                             config=to_dict(cfg), evaluation={"last_step": last} if last else None)
