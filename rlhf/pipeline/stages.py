"""The pipeline stages, registered in the order they run: what each one does
(`(pipeline, folder) -> (output path, metrics)`), which config sections it depends on, which
earlier stages' artifacts it reads, and whether its output is the next policy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from rlhf.data.prompts import training_prompts
from rlhf.data.tables import load_source, save
from rlhf.registry import Registry
from rlhf.rl.curriculum import sharpening_headroom, type_counts, weight_by_headroom
from rlhf.supervised.inputs import generate_pairs, pair_job, probe_path, sft_job
from rlhf.supervised.trainer import run_finetune

if TYPE_CHECKING:
    from rlhf.pipeline.runner import Pipeline


@dataclass(frozen=True)
class Stage:
    run: Callable[[Pipeline, Path], tuple]  # (pipeline, folder) -> (output path, metrics)
    sections: tuple[str, ...]  # config sections whose change reruns the stage
    upstream: tuple[str, ...] = ()  # earlier stages whose artifacts it reads (by hash)
    produces_policy: bool = False  # its output is the policy the next stages start from


PIPELINE_STAGES: Registry[Stage] = Registry("pipeline stage")
"""Stages by name (`pipeline.stages`), in the order a pipeline runs them."""


def stage(name: str, sections: tuple[str, ...], upstream: tuple[str, ...] = (), produces_policy: bool = False):
    """Register the decorated `(pipeline, folder) -> (output, metrics)` function as a stage."""

    def wrap(fn: Callable) -> Callable:
        PIPELINE_STAGES.register(name)(Stage(fn, sections, upstream, produces_policy))
        return fn

    return wrap


def _heldout(dropped: int) -> dict:
    """Manifest fields: held-out questions dropped from a stage's inputs, and found in them after
    (always 0: a stage with overlap left stops with rlhf.data.heldout.ContaminationError)."""
    return {"heldout_dropped": dropped, "heldout_overlap": 0}


def _last_val(rows: list[dict]) -> dict:
    return {k: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else {}


@stage("sft", ("sft", "model", "data"), produces_policy=True)
def run_sft(p: Pipeline, folder: Path):
    job = sft_job(p.cfg, p.current_policy(), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "examples": len(job.train),
                              **_heldout(job.heldout_dropped)}


@stage("pairs", ("pipeline", "reward", "rollout", "model", "data"), upstream=("sft",))
def run_pairs(p: Pipeline, folder: Path):
    info = generate_pairs(p.cfg, p.current_policy(), folder / "pairs.parquet")
    return folder / "pairs.parquet", info


def _pair_files(p: Pipeline, stage: str) -> list[str]:
    return [str(p.need(stage, "pairs").output), *p.cfg.pipeline.human_feedback]


@stage("rm", ("rm", "pipeline"), upstream=("pairs",))
def run_rm(p: Pipeline, folder: Path):
    base = p.cfg.rm.base_model or p.base_model
    job = pair_job("rm", p.cfg, base, _pair_files(p, "rm"), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "pairs": len(job.train),
                              **_heldout(job.heldout_dropped)}


@stage("dpo", ("dpo", "pipeline"), upstream=("pairs", "sft"), produces_policy=True)
def run_dpo(p: Pipeline, folder: Path):
    job = pair_job("dpo", p.cfg, p.current_policy(), _pair_files(p, "dpo"), folder / "model")
    rows = run_finetune(job, p.cfg, log=p.log)
    return folder / "model", {"first": rows[0], "last": _last_val(rows), "pairs": len(job.train),
                              **_heldout(job.heldout_dropped)}


@stage("rl", ("algo", "rollout", "learner", "reward", "reference", "train", "data", "model", "pipeline"),
       upstream=("sft", "dpo", "pairs", "rm"), produces_policy=True)
def run_rl(p: Pipeline, folder: Path):
    """RL on Ray actors, started by the function the CLI layer handed the pipeline."""
    if p.run_training is None:
        raise RuntimeError("the rl stage needs Pipeline(run_training=...) from the CLI layer")
    cfg = p.cfg
    reward = cfg.reward
    if "rm" in p.cfg.pipeline.stages:
        reward = dataclasses.replace(reward, model_path=str(p.need("rl", "rm").output))
    policy = p.current_policy()
    cfg = p.stage_config(model=dataclasses.replace(cfg.model, path=policy), reward=reward,
                         reference=dataclasses.replace(cfg.reference, path=policy),
                         train=dataclasses.replace(cfg.train, export=True), data=_rl_data(p, folder))
    run_dir = folder / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # the inputs changed: this RL run starts over
    prompts, dropped = training_prompts(cfg)  # what the trainer's PromptSet will hold (checked there too)
    p.run_training(cfg, run_dir=run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("reward/mean", "objective/kl", "timing/step")
    return run_dir / "model", {"first": {k: rows[0].get(k) for k in keep}, "last": {k: rows[-1].get(k) for k in keep},
                               "steps": len(rows), "prompts": prompts.num_rows,
                               "prompts_from": p.cfg.pipeline.rl_prompts, **_heldout(dropped)}


def _rl_data(p: Pipeline, folder: Path):
    """data.train, or with pipeline.rl_prompts `headroom` its questions weighted per type by how
    much the pairs stage's probe says RL can sharpen there (rlhf/rl/curriculum.py), as a file."""
    cfg = p.cfg
    if cfg.pipeline.rl_prompts == "data":
        return cfg.data
    probe = pq.read_table(probe_path(p.need("rl", "pairs").output))
    headroom = sharpening_headroom(probe)
    pool = load_source(cfg.data.train, "prompts", cfg.data.fields, cfg.data.gym_size, cfg.data.seed).table
    table = weight_by_headroom(pool, headroom, seed=cfg.data.seed)
    path = save(table, folder / "prompts.parquet")
    p.log(f"[rl] maj@k - mean@k by question type on {probe.num_rows} probed questions: "
          + ", ".join(f"{t} {h:.3f}" for t, h in sorted(headroom.items(), key=lambda kv: str(kv[0])))
          + f"; prompts kept: {type_counts(table)} of {pool.num_rows}")
    return dataclasses.replace(cfg.data, train=str(path), fields={})


@stage("eval", ("eval", "model"), upstream=("sft", "dpo", "rl", "rm"))
def run_eval(p: Pipeline, folder: Path):
    from rlhf.evaluation.heldout import evaluate

    final = p.current_policy()
    answers: dict = {}
    cfg = p.cfg
    if "rm" in cfg.pipeline.stages and not cfg.eval.reward_model:  # helpfulness: the pipeline's own RM
        cfg = p.stage_config(eval=dataclasses.replace(cfg.eval, reward_model=str(p.need("eval", "rm").output)))
    report = evaluate(final, cfg.eval.data, folder, cfg, baseline=p.base_model, answers=answers)
    ladder = _ladder(p, folder, answers)
    diff = report["diff"]["accuracy"]
    summary = {
        "heldout_accuracy_before": report["baseline"]["accuracy"],
        "heldout_accuracy_after": report["accuracy"],
        "heldout_accuracy_diff": diff["mean"],
        "heldout_accuracy_diff_ci95": list(diff["ci95"]),
        "heldout_questions": report["n"],
        "heldout_answer_length": report.get("length"),  # the production monitor's baseline
        "heldout_refusal": report.get("refusal"),
        "final_model": final,
        "base_model": p.base_model,
        "report": str(folder / "report.md"),
        "stage_seconds": {s: a.manifest["seconds"] for s, a in p.artifacts.items()},
        # Per training stage: held-out questions found in its inputs (0) and dropped from them.
        "heldout_overlap": _per_stage(p, "heldout_overlap"),
        "heldout_dropped": _per_stage(p, "heldout_dropped"),
        "ladder": ladder,
    }
    _update_summary(p, summary, keep=("releasable", "redteam"))  # a skipped redteam stage's verdict stands
    return folder / "report.json", summary


def _update_summary(p: Pipeline, fields: dict, keep: tuple[str, ...] = ()) -> None:
    """Write `fields` into run_dir/summary.json; `keep` names old fields that survive."""
    path = p.run_dir / "summary.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**{k: old[k] for k in keep if k in old}, **fields} if keep else {**old, **fields},
                               indent=2))


@stage("redteam", ("redteam", "serve", "model"), upstream=("sft", "dpo", "rl"))
def run_redteam_stage(p: Pipeline, folder: Path):
    """Attack the final policy behind the serve guardrails; the gate decides `releasable`."""
    from rlhf.redteam.run import model_target, run_redteam

    report = run_redteam(model_target(p.current_policy(), p.cfg), p.cfg, folder, log=p.log)
    verdict = {"passed": report["gate"]["passed"], "failed": report["gate"]["failed"],
               "categories": {k: v["attack_success"] for k, v in report["categories"].items()},
               "over_refusal": (report["over_refusal"] or {}).get("rate"),
               "bias_consistency": {k: v["consistency"] for k, v in report["bias_consistency"].items()},
               "robustness_drop": report["robustness_drop"], "report": str(folder / "report.md")}
    _update_summary(p, {"releasable": report["gate"]["passed"], "redteam": verdict})
    return folder / "report.json", verdict


def _per_stage(p: Pipeline, key: str) -> dict:
    return {s: a.manifest["metrics"][key] for s, a in p.artifacts.items() if key in a.manifest.get("metrics", {})}


def _ladder(p: Pipeline, folder: Path, answers: dict) -> list[dict]:
    """Base and every model-producing stage that ran, on the eval set (rlhf/evaluation/ladder.py);
    the table and plot go into report.md."""
    from rlhf.evaluation.heldout import load_eval_rows
    from rlhf.evaluation.ladder import build_ladder, ladder_answers, ladder_markdown, plot_ladder
    from rlhf.models.loading import resolve_model_path

    rungs = [("base", p.base_model)] + [
        (s, resolve_model_path(str(p.artifacts[s].output))) for s in PIPELINE_STAGES.names()
        if PIPELINE_STAGES[s].produces_policy and s in p.artifacts and s in p.cfg.pipeline.stages]
    rows, _ = load_eval_rows(p.cfg.eval.data, p.cfg)
    ladder = build_ladder(rungs, rows, ladder_answers(rungs, rows, p.cfg, answers), p.cfg.eval.bootstrap,
                          p.cfg.eval.seed)
    plot_ladder(ladder, folder / "ladder.png")
    report = folder / "report.md"
    report.write_text(report.read_text() + "\n" + ladder_markdown(ladder))
    return ladder
