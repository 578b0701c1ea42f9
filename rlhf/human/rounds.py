"""`rlhf round`: one turn of the human-in-the-loop: learn from the reviews, check, promote.

A round
1. exports the reviews (and, with review.production_feedback, the endpoint users' feedback) as
   preference pairs, ratings and corrected QA pairs (rlhf/human/feedback.py) into round-NNN/data/;
2. retrains from the last promoted model: DPO on the pairs, or a reward model on them and RL
   against it (review.method); with review.sft_corrections, SFT on the corrections first;
3. evaluates the new model on the fixed validation set (eval.data, greedy, rlhf/evaluation/heldout.py);
4. compares it question by question with the promoted model and with the round before (paired
   bootstrap intervals) and writes report.md and report.json (rlhf/human/round_report.py).

Rounds are numbered folders under review.run_dir. round-000 is the starting model (model.path)
evaluated once: the first promoted model. A round is promoted when review.promote_metric is not
worse than the promoted model's by more than review.tolerance. A worse round is kept and its
report says so, but the next round trains from the promoted model and the queue samples from
it. Training data is cumulative (every review so far), so the reviews that a rejected round
learnt from are not lost. The validation set is fixed per run directory: a round refuses to run
when eval.* no longer matches what round-000 used.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rlhf.config.tree import Config
from rlhf.config.typed_yaml import ConfigError
from rlhf.evaluation.metrics import METRICS
from rlhf.models.loading import resolve_model_path

ROUND_DIR = re.compile(r"^round-(\d{3,})$")
"""Promotion metrics where a smaller value is the better one."""


class RoundError(RuntimeError):
    """A round cannot run (nothing to learn from, a changed validation set, ...)."""


# ----------------------------------------------------------------------------- history


def history(run_dir: str | Path) -> list[dict]:
    """Reports of the finished rounds, oldest first (a folder without report.json never finished)."""
    out = []
    for folder in sorted(Path(run_dir).glob("round-*")):
        if ROUND_DIR.match(folder.name) and (folder / "report.json").is_file():
            out.append(json.loads((folder / "report.json").read_text()))
    return sorted(out, key=lambda r: r["round"])


def promoted(run_dir: str | Path) -> dict | None:
    return next((r for r in reversed(history(run_dir)) if r["promoted"]), None)


def current_model(cfg: Config) -> str:
    """The model reviewers should see answers from: the last promoted round's, else model.path."""
    best = promoted(cfg.review.run_dir)
    return best["model"] if best else resolve_model_path(cfg.model.path)


def is_better_or_equal(metric: str, value: float | None, best: float | None, tolerance: float) -> bool:
    if value is None or best is None:
        return False
    if METRICS[metric].better == "lower":
        return value <= best + tolerance
    return value >= best - tolerance


def decide(metric: str, value: float | None, best: dict, tolerance: float) -> tuple[bool, str]:
    """(promote?, the sentence that says why) for a round whose validation `metric` is `value`,
    against `best`, the promoted round's report."""
    best_value = best["metrics"].get(metric)
    if value is None or best_value is None:
        return False, f"{metric} is undefined on this validation set, so the round cannot be promoted"
    ok = is_better_or_equal(metric, value, best_value, tolerance)
    relation = "not worse than" if ok else "worse than"
    return ok, f"{metric} {value:.4f} is {relation} {best_value:.4f} of round {best['round']} (tolerance {tolerance:g})"


def gate_decision(ok: bool, decision: str, gate: dict | None) -> tuple[bool, str]:
    """The metric decision, overruled by a failed red-team gate (None: no red teaming)."""
    if gate is None or gate["passed"]:
        return ok, decision if gate is None else f"{decision}; red-team gate passed"
    from rlhf.redteam.report import failures

    return False, f"{decision}; not promoted: the red-team gate failed ({failures(gate)})"


def validation_spec(cfg: Config) -> dict:
    e = cfg.eval
    return {"data": e.data, "size": e.size, "seed": e.seed, "max_new_tokens": e.max_new_tokens,
            "reward_model": e.reward_model}


# ----------------------------------------------------------------------------- a round


def run_round(cfg: Config, run_training: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the next round; returns its report (also round-NNN/report.json). `run_training` is
    the RL entry point (actors/launch.py run_training), needed only for review.method rm+rl."""
    from rlhf.human.feedback import export_feedback

    _check_config(cfg, run_training)
    run_dir = Path(cfg.review.run_dir).resolve()  # Ray Train workers run in other directories
    _ensure_start(cfg, run_dir, log)
    past = history(run_dir)
    best = promoted(run_dir)
    n = past[-1]["round"] + 1
    folder = run_dir / f"round-{n:03d}"
    if folder.exists():
        shutil.rmtree(folder)  # an attempt that never finished
    started = time.perf_counter()
    log(f"[round {n}] exporting reviews and feedback from {cfg.serve.feedback_db}")
    exported = export_feedback(cfg.serve.feedback_db, folder / "data", production=cfg.review.production_feedback)
    model, training = retrain(cfg, best["model"], exported, folder, run_training, log)
    log(f"[round {n}] evaluating {model} on {cfg.eval.data}")
    result = _evaluate(cfg, model, folder / "eval")
    gate = _redteam(cfg, model, folder / "redteam", log) if cfg.review.redteam else None
    agreement = _agreement(cfg)
    report = _report(cfg, n, str(model), result, best, past[-1], exported, training, agreement)
    report["promoted"], report["decision"] = gate_decision(report["promoted"], report["decision"], gate)
    report["redteam"] = gate
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write(folder, report, history=past + [report])
    verdict = "promoted" if report["promoted"] else "kept, not promoted"
    log(f"[round {n}] {verdict}: {report['decision']}")
    return report


def _check_config(cfg: Config, run_training: Callable | None) -> None:
    r = cfg.review
    if not cfg.eval.data:
        raise ConfigError("eval.data: review rounds are judged on a fixed validation set; set eval.data")
    if r.promote_metric == "rm_score" and not cfg.eval.reward_model:
        raise ConfigError("review.promote_metric: rm_score needs eval.reward_model")
    if r.method == "rm+rl" and run_training is None:
        raise RoundError("review.method rm+rl needs the RL runner (run it through `rlhf round`)")
    if not Path(cfg.serve.feedback_db).is_file():
        raise RoundError(f"feedback database {cfg.serve.feedback_db} does not exist: build a queue with "
                         "`rlhf review queue` and collect reviews first")


def _ensure_start(cfg: Config, run_dir: Path, log: Callable[[str], None]) -> None:
    """round-000: the starting model on the validation set, written once per run directory."""
    start = resolve_model_path(cfg.model.path)
    report_path = run_dir / "round-000" / "report.json"
    if report_path.is_file():
        first = json.loads(report_path.read_text())
        if first["model"] != start:
            raise RoundError(f"{run_dir} started from {first['model']}, but model.path is {start}; "
                             "use another review.run_dir for another starting model")
        if first["validation"] != validation_spec(cfg):
            raise RoundError(f"the validation set of {run_dir} is fixed: round-000 used {first['validation']}, "
                             f"the config now says {validation_spec(cfg)}; use another review.run_dir")
        return
    log(f"[round 0] evaluating the starting model {start} on {cfg.eval.data}")
    result = _evaluate(cfg, start, run_dir / "round-000" / "eval")
    report = {"round": 0, "model": start, "promoted": True, "decision": "the starting model",
              "metric": cfg.review.promote_metric,
              "validation": validation_spec(cfg), "n": result["n"], "metrics": _metrics(result),
              "ci95": result.get("ci95", {}), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write(run_dir / "round-000", report, history=[report])


def _evaluate(cfg: Config, model: str | Path, out: Path) -> dict:
    from rlhf.evaluation.heldout import evaluate

    return evaluate(str(model), cfg.eval.data, out, cfg)


def _redteam(cfg: Config, model: str | Path, out: Path, log: Callable[[str], None]) -> dict:
    """The round's model attacked behind the serve guardrails; returns the gate."""
    from rlhf.redteam.run import model_target, run_redteam

    log(f"[round] red-teaming {model}")
    return run_redteam(model_target(str(model), cfg), cfg, out, log=log)["gate"]


def _metrics(result: dict) -> dict:

    return {m: result.get(m) for m in METRICS}


# ----------------------------------------------------------------------------- retraining


def retrain(cfg: Config, base: str, exported: dict, folder: Path, run_training: Callable | None,
            log: Callable[[str], None]) -> tuple[Path, dict]:
    """Train the round's model from `base` on the exported files -> (model folder, summary)."""
    from rlhf.supervised.inputs import pair_job
    from rlhf.supervised.trainer import run_finetune

    files = [exported[name]["path"] for name in ("preferences", "ratings") if exported[name]["rows"]]
    if not files:
        raise RoundError("nothing to learn from: the export has no preference pairs or ratings; collect "
                         "reviews on the review page (`rlhf review queue` fills it) first")
    info: dict = {"method": cfg.review.method, "base_model": base,
                  "rows": {name: e["rows"] for name, e in exported.items()}}
    if cfg.review.sft_corrections:
        base, info["sft"] = _sft_on_corrections(cfg, base, exported["corrections"], folder / "sft", log)
    if cfg.review.method == "dpo":
        log(f"DPO from {base} on {', '.join(files)}")
        job = pair_job("dpo", cfg, base, files, folder / "model")
        info.update(pairs=len(job.train), validation=_last_val(run_finetune(job, cfg)))
        return folder / "model", info
    log(f"reward model on {', '.join(files)}, then RL from {base}")
    rm_job = pair_job("rm", cfg, cfg.rm.base_model or cfg.model.path, files, folder / "rm")
    info.update(pairs=len(rm_job.train), rm_validation=_last_val(run_finetune(rm_job, cfg)))
    rl_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=base),
        reward=dataclasses.replace(cfg.reward, model_path=str(folder / "rm")),
        reference=dataclasses.replace(cfg.reference, path=base),
        train=dataclasses.replace(cfg.train, export=True))
    run_training(rl_cfg, run_dir=folder / "rl")
    return folder / "rl" / "model", info


def _sft_on_corrections(cfg: Config, base: str, corrections: dict, out: Path,
                        log: Callable[[str], None]) -> tuple[str, dict]:
    """SFT on the corrected answers; skipped (and said so) when there are too few of them."""
    from rlhf.data.readers import DataError
    from rlhf.supervised.inputs import sft_job
    from rlhf.supervised.trainer import run_finetune

    if not corrections["rows"]:
        return base, {"skipped": "no corrections"}
    stage_cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, data=corrections["path"]))
    try:
        job = sft_job(stage_cfg, base, out)
        rows = run_finetune(job, stage_cfg)
    except (DataError, ValueError) as exc:
        log(f"SFT on corrections skipped: {exc}")
        return base, {"skipped": str(exc)}
    return str(out), {"examples": len(job.train), "validation": _last_val(rows)}


def _last_val(rows: list[dict]) -> dict:
    return {k: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else {}


# ----------------------------------------------------------------------------- reporting


def _agreement(cfg: Config) -> dict:
    from rlhf.human.feedback import FeedbackStore
    from rlhf.human.review_store import ReviewStore

    store = FeedbackStore(cfg.serve.feedback_db)
    try:
        return ReviewStore(store).agreement()
    finally:
        store.close()


def _answers(folder: Path) -> list[dict]:
    path = folder / "eval" / "answers.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_rounds(run_dir: Path, new: int, old: dict, cfg: Config) -> dict:
    """Paired comparison of round `new`'s validation answers with those of the round whose
    report is `old` (same questions, same order)."""
    from rlhf.evaluation.metrics import compare

    mine, theirs = _answers(run_dir / f"round-{new:03d}"), _answers(run_dir / f"round-{old['round']:03d}")
    if [q["question"] for q in mine] != [q["question"] for q in theirs]:
        raise RoundError(f"rounds {new} and {old['round']} were evaluated on different questions")
    summary, _ = compare(mine, theirs, None, cfg.eval.bootstrap, cfg.eval.seed)
    summary.pop("kl_to_baseline", None)
    summary.pop("kl_to_baseline_ci95", None)
    return {"round": old["round"], "metrics": old["metrics"], **summary}


def _report(cfg, n, model, result, best, previous, exported, training, agreement) -> dict:
    from rlhf.pipeline.runner import file_hash

    r, run_dir = cfg.review, Path(cfg.review.run_dir).resolve()
    metric, value = r.promote_metric, result.get(r.promote_metric)
    ok, decision = decide(metric, value, best, r.tolerance)
    reached = bool(r.target) and value is not None and (
        value <= r.target if METRICS[metric].better == "lower" else value >= r.target)
    return {
        "round": n, "model": model, "promoted": ok, "decision": decision, "metric": metric, "value": value,
        "base_round": best["round"], "previous_round": previous["round"], "previous_promoted": previous["promoted"],
        "target": r.target or None, "target_reached": reached, "validation": validation_spec(cfg), "n": result["n"],
        "metrics": _metrics(result), "ci95": result.get("ci95", {}),
        "vs_promoted": compare_rounds(run_dir, n, best, cfg),
        "vs_previous": (compare_rounds(run_dir, n, previous, cfg)
                        if previous["round"] != best["round"] else None),
        "data": {name: {"rows": e["rows"], "hash": file_hash(e["path"])} for name, e in exported.items()},
        "training": training, "agreement": agreement, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write(folder: Path, report: dict, history: list[dict]) -> None:
    from rlhf.evaluation.report import clean_json
    from rlhf.human.round_report import markdown

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(markdown(report, history))
    # report.json last: its presence marks the round as finished.
    text = json.dumps(clean_json(report), indent=2, ensure_ascii=False, allow_nan=False, default=str)
    (folder / "report.json").write_text(text + "\n")
