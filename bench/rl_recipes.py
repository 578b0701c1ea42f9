"""Which RL recipe teaches the QA assistant most? Variants of one RL stage, side by side.

    .venv/bin/python bench/rl_recipes.py --policy runs/support-qa/sft/model \
        [--config examples/support-qa.yaml] [--reward-model runs/support-qa/rm/model] \
        [--variants grpo,dynamic,seq_mean] [--steps 8] [--set learner.lr=3e-6 ...] [--reuse]

Every variant starts `rlhf train` from the same policy (the SFT model of a pipeline run; it is
the reference too) with the same seed, prompts and step count, and differs only in the
overrides listed in VARIANTS. Then the policy and every variant's exported model answer the
config's held-out questions greedily, and each variant is compared with the policy it started
from: held-out accuracy, paired-bootstrap 95% CI of the difference, per question type, and the
run's last sampled reward and KL. Writes bench/results/rl_recipes.json; runs go to
bench/runs/rl_recipes/<variant>/ (`--reuse` keeps a variant whose model is already there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_average, machine, machine_table, write_result  # noqa: E402

_PLAIN = ["algo.dynamic_sampling=false", "algo.clip_eps_high=0"]
_DYNAMIC = ["algo.dynamic_sampling=true", "algo.clip_eps_high=0"]
VARIANTS: dict[str, list[str]] = {
    # Every variant names each setting it compares, so the config's own choice does not leak in.
    # The baseline: GRPO, every prompt group trained on, loss averaged per micro-batch.
    "grpo": [*_PLAIN, "algo.loss_agg=micro_token_mean"],
    # Without dynamic sampling, the global token mean over the mini-batch.
    "token_mean": [*_PLAIN, "algo.loss_agg=token_mean"],
    # The GRPO paper's sequence mean: each sequence's token mean, then the mean over sequences.
    "seq_mean": [*_PLAIN, "algo.loss_agg=seq_mean_token_mean"],
    # DAPO's dynamic sampling: groups whose samples all got the same reward are dropped and
    # more prompts drawn, so the batch holds the questions the policy still gets wrong sometimes.
    "dynamic": [*_DYNAMIC, "algo.loss_agg=token_mean"],
    # The same with the loss averaged per sequence first (GRPO paper) instead of per token.
    "dynamic_seq_mean": [*_DYNAMIC, "algo.loss_agg=seq_mean_token_mean"],
    # DAPO's clip-higher on top of dynamic sampling.
    "dynamic_clip_higher": ["algo.dynamic_sampling=true", "algo.loss_agg=token_mean", "algo.clip_eps_high=0.28"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="model folder RL starts from (and its reference)")
    p.add_argument("--config", default=str(ROOT / "examples" / "support-qa.yaml"))
    p.add_argument("--reward-model", default="", help="reward model folder (reward.model_path); none: rules only")
    p.add_argument("--variants", default="grpo,dynamic,dynamic_seq_mean")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--set", nargs="*", default=[], help="overrides every variant gets, e.g. learner.lr=3e-6")
    p.add_argument("--out", default=str(ROOT / "bench" / "runs" / "rl_recipes"))
    p.add_argument("--reuse", action="store_true", help="keep a variant whose exported model exists")
    return p.parse_args(argv)


def common_overrides(args) -> list[str]:
    policy = str(Path(args.policy).resolve())
    sets = [f"model.path={policy}", f"reference.path={policy}", f"train.steps={args.steps}", "train.export=true",
            "train.save_every=0"]
    if args.reward_model:
        sets.append(f"reward.model_path={Path(args.reward_model).resolve()}")
    else:
        sets.append("reward.model_weight=0")
    return sets + list(args.set)


def train_variant(name: str, args, run_dir: Path) -> float:
    """`rlhf train` with the variant's overrides; returns its wall seconds (0 when reused)."""
    if args.reuse and (run_dir / "model" / "config.json").is_file():
        return 0.0
    cmd = [str(ROOT / ".venv" / "bin" / "rlhf"), "train", args.config, "--run-dir", str(run_dir),
           *common_overrides(args), *VARIANTS[name]]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def run_summary(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {"steps": len(rows), "reward_last": last.get("reward/mean"), "kl_last": last.get("objective/kl"),
            "dropped_frac_mean": _mean([r.get("rollout/groups_dropped_frac") for r in rows]),
            "step_seconds_mean": _mean([r.get("timing/step") for r in rows[1:]] or [rows[0].get("timing/step")])}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def compare(args, runs: dict[str, Path]) -> dict:
    """Greedy held-out answers of the policy and each variant; each variant vs the policy."""
    from rlhf.config.tree import load_config
    from rlhf.evaluation.heldout import load_eval_rows
    from rlhf.evaluation.ladder import build_ladder, ladder_answers
    from rlhf.models.loading import resolve_model_path

    cfg = load_config(args.config, list(args.set))  # e.g. model.dtype: evaluated as it was trained
    rows, _ = load_eval_rows(cfg.eval.data, cfg)
    policy = str(Path(args.policy).resolve())
    models = {name: resolve_model_path(str(run / "model")) for name, run in runs.items()}
    answers = ladder_answers([("policy", policy), *models.items()], rows, cfg, {})
    out = {}
    for name, model in models.items():
        start, rung = build_ladder([("policy", policy), (name, model)], rows, answers, cfg.eval.bootstrap,
                                   cfg.eval.seed)
        out[name] = {"policy_accuracy": start["accuracy"], **rung}
    return out


def table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="RL recipes: each variant vs the policy it started from, same held-out questions")
    for col in ("variant", "accuracy", "vs policy", "95% CI", "by type (acc, diff)", "reward last", "KL last",
                "dropped", "s/step"):
        t.add_column(col)
    for name, r in results["variants"].items():
        ci = r["diff_vs_previous_ci95"]
        types = ", ".join(f"{k} {v['accuracy']:.2f} ({v['diff_vs_previous']:+.2f})" for k, v in r["by_type"].items())
        run = r["run"]
        t.add_row(name, f"{r['accuracy']:.3f}", f"{r['diff_vs_previous']:+.3f}", f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
                  types, _fmt(run["reward_last"]), _fmt(run["kl_last"]), _fmt(run["dropped_frac_mean"]),
                  _fmt(run["step_seconds_mean"], 1))
    Console(width=200).print(t)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    from rlhf.config.tree import load_config

    for n in names:  # a bad override stops here, before any run starts
        load_config(args.config, common_overrides(args) + VARIANTS[n])
    runs = {n: Path(args.out) / n for n in names}
    seconds = {n: train_variant(n, args, runs[n]) for n in names}
    compared = compare(args, runs)
    results = {"machine": machine(), "load_average": load_average(), "policy": args.policy, "config": args.config,
               "steps": args.steps, "common_overrides": common_overrides(args),
               "variants": {n: {**compared[n], "overrides": VARIANTS[n], "train_seconds": seconds[n],
                                "run": run_summary(runs[n])} for n in names}}
    from rich.console import Console

    Console(width=200).print(machine_table("machine", {"this run": results["machine"]}))
    table(results)
    print(f"wrote {write_result('rl_recipes', results)}")


if __name__ == "__main__":
    main()
