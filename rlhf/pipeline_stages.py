"""What each pipeline stage does: `(pipeline, folder) -> (output path, metrics)`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from rlhf.finetune import run_finetune
from rlhf.pipeline import Pipeline
from rlhf.stages import generate_pairs, pair_job, sft_job


def _last_val(rows: list[dict]) -> dict:
    return {k: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else {}


def run_sft(p: Pipeline, folder: Path):
    job = sft_job(p.cfg, p.current_policy(), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "examples": len(job.train)}


def run_pairs(p: Pipeline, folder: Path):
    info = generate_pairs(p.cfg, p.current_policy(), folder / "pairs.parquet")
    return folder / "pairs.parquet", info


def _pair_files(p: Pipeline, stage: str) -> list[str]:
    return [str(p.need(stage, "pairs").output), *p.cfg.pipeline.human_feedback]


def run_rm(p: Pipeline, folder: Path):
    base = p.cfg.rm.base_model or p.base_model
    job = pair_job("rm", p.cfg, base, _pair_files(p, "rm"), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "pairs": len(job.train)}


def run_dpo(p: Pipeline, folder: Path):
    job = pair_job("dpo", p.cfg, p.current_policy(), _pair_files(p, "dpo"), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "pairs": len(job.train)}


def rl_runner(run_training: Callable) -> Callable:
    """The RL stage, given the function that starts the Ray actors (from the CLI layer)."""

    def run_rl(p: Pipeline, folder: Path):
        cfg = p.cfg
        reward = cfg.reward
        if "rm" in p.cfg.pipeline.stages:
            reward = dataclasses.replace(reward, model_path=str(p.need("rl", "rm").output))
        policy = p.current_policy()
        cfg = p.stage_config(model=dataclasses.replace(cfg.model, path=policy), reward=reward,
                             reference=dataclasses.replace(cfg.reference, path=policy),
                             train=dataclasses.replace(cfg.train, export=True))
        run_dir = folder / "run"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # the inputs changed: this RL run starts over
        run_training(cfg, run_dir=run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        keep = ("reward/mean", "objective/kl", "timing/step")
        return run_dir / "model", {"first": {k: rows[0].get(k) for k in keep}, "last": {k: rows[-1].get(k) for k in keep},
                                   "steps": len(rows)}

    return run_rl


def run_eval(p: Pipeline, folder: Path):
    from rlhf.evaluate import evaluate

    final = p.current_policy()
    report = evaluate(final, p.cfg.eval.data, folder, p.cfg, baseline=p.base_model)
    diff = report["diff"]["accuracy"]
    summary = {
        "heldout_accuracy_before": report["baseline"]["accuracy"],
        "heldout_accuracy_after": report["accuracy"],
        "heldout_accuracy_diff": diff["mean"],
        "heldout_accuracy_diff_ci95": list(diff["ci95"]),
        "heldout_questions": report["n"],
        "final_model": final,
        "base_model": p.base_model,
        "report": str(folder / "report.md"),
        "stage_seconds": {s: a.manifest["seconds"] for s, a in p.artifacts.items()},
    }
    (p.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder / "report.json", summary


def runners(run_training: Callable) -> dict[str, Callable]:
    return {"sft": run_sft, "pairs": run_pairs, "rm": run_rm, "dpo": run_dpo, "rl": rl_runner(run_training),
            "eval": run_eval}
