"""Supervised stages against TRL: our SFT (Ray Train + DeepSpeed) and TRL's SFTTrainer, same run.

    .venv/bin/python bench/finetune_throughput.py [--config examples/support-qa.yaml] [--steps 12]
        [--trl-python bench/.venv-trl/bin/python] [overrides...]

Both sides train the config's model on the examples our SFT stage builds from `sft.data` (chat
template, answer-only loss, `sft.max_length`): TRL gets them already tokenised, so it trains on
the very same tokens. Same batch (`sft.batch_size`, micro-batches of `sft.micro_batch_size`),
learning rate (constant on both), steps and dtype (`model.dtype`; fp32 in the QA job). Ours runs
as the pipeline's sft stage does (`sft.num_workers` Ray Train workers, ZeRO `sft.zero_stage`);
TRL in one process of its own venv (bench/setup_trl.sh), which uses both cores.

Tokens per second count real (not padding) tokens: steps x batch x the examples' mean length,
over the steady part of the run (the end of step 1 to the end of step N; start-up and the first
step are reported apart). Writes bench/results/finetune_throughput.json with `ratio_vs_trl`
(ours over TRL's tokens per second) for each stage measured. RM and DPO are not measured yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    load_average,
    machine,
    machine_table,
    run_trl_side,
    versions,
    write_result,
)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "support-qa.yaml"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--trl-python", default=str(ROOT / "bench" / ".venv-trl" / "bin" / "python"))
    return p.parse_known_args(argv)


def sft_setup(args, overrides: list[str]):
    from rlhf.config.tree import load_config
    from rlhf.models.loading import resolve_model_path

    cfg = load_config(args.config, [*overrides, f"sft.max_steps={args.steps}", "sft.epochs=100"])
    base = resolve_model_path(cfg.model.path)
    return cfg, base


def watch_progress(out: Path, seen: dict, stop: threading.Event) -> None:
    """Every step's worker-side seconds and train loss, from the SFT run's progress.json."""
    while not stop.wait(0.05):
        try:
            p = json.loads((out / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        seen.setdefault(p["step"], {"seconds": p["seconds"], "loss": p.get("train/loss")})


def run_ours(cfg, job) -> dict:
    from rlhf.supervised.trainer import run_finetune

    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_progress, args=(Path(job.out_dir), seen, stop), daemon=True)
    load_start = load_average()
    started = time.perf_counter()
    watcher.start()
    try:
        run_finetune(job, cfg)
    finally:
        stop.set()
    wall = time.perf_counter() - started
    steps = [seen[k] for k in sorted(seen)]
    return {"step_seconds": [s["seconds"] for s in steps], "loss": [s["loss"] for s in steps], "wall": wall,
            "load_average": [load_start, load_average()],
            "machine": machine(**versions("ray", "deepspeed", "transformers")),
            "settings": {"workers": job.settings.num_workers, "zero_stage": job.settings.zero_stage,
                         "dtype": cfg.model.dtype}}


def run_trl(workload: dict, python: str) -> dict:
    result = run_trl_side("trl_sft.py", workload, python)
    result["step_seconds"] = [e - result["train_begin"] for e in result["step_end"]]
    return result


def summarise(side: dict, tokens_per_step: float) -> dict:
    t = side["step_seconds"]
    steady = (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else t[0]
    losses = [x for x in side["loss"] if x is not None]
    return {"steps": len(t), "first_step_s": round(t[0], 2), "s_per_step": round(steady, 3),
            "tokens_per_s": round(tokens_per_step / steady, 1), "final_loss": round(losses[-1], 4) if losses else None,
            "loss_last3": round(sum(losses[-3:]) / len(losses[-3:]), 4) if losses else None}


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    from rlhf.supervised.inputs import sft_job

    cfg, base = sft_setup(args, overrides)
    s = cfg.sft
    with tempfile.TemporaryDirectory(prefix="finetune-ours-") as tmp:
        job = sft_job(cfg, base, Path(tmp) / "sft")
        lengths = [len(e.input_ids) for e in job.train]
        tokens_per_step = s.batch_size * sum(lengths) / len(lengths)
        examples = [{"input_ids": e.input_ids, "completion_mask": [int(x != -100) for x in e.labels]}
                    for e in job.train]
        print(f"[sft] {len(job.train)} examples, {sum(lengths) / len(lengths):.1f} tokens each on average; "
              f"{args.steps} steps of {s.batch_size}", flush=True)
        sides = {"ours": run_ours(cfg, job)}
    workload = {"root": str(ROOT), "model_path": base, "examples": examples, "steps": args.steps,
                "batch_size": s.batch_size, "micro_batch_size": s.micro_batch_size, "lr": s.lr,
                "max_length": s.max_length, "seed": cfg.data.seed, "bf16": cfg.model.dtype == "bfloat16"}
    sides["trl"] = run_trl(workload, args.trl_python)
    summary = {name: summarise(side, tokens_per_step) for name, side in sides.items()}
    ratio = summary["ours"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
    report(summary, sides, ratio)
    write_result("finetune_throughput", {
        "settings": {"config": args.config, "overrides": overrides, "steps": args.steps, "batch_size": s.batch_size,
                     "micro_batch_size": s.micro_batch_size, "max_length": s.max_length, "lr": s.lr,
                     "dtype": cfg.model.dtype, "tokens_per_step": round(tokens_per_step, 1)},
        "ratio_vs_trl": {"sft": round(ratio, 3)},
        "stages": {"sft": {"ours": summary["ours"], "trl": summary["trl"]}},
        "sides": {k: {kk: v for kk, v in side.items() if kk in ("machine", "settings", "load_average", "wall")}
                  for k, side in sides.items()}})


def report(summary: dict, sides: dict, ratio: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SFT: ours vs TRL SFTTrainer, same examples and host")
    table.add_column("metric")
    table.add_column("ours (Ray Train + DeepSpeed)", justify="right")
    table.add_column("TRL SFTTrainer", justify="right")
    for key in ("tokens_per_s", "s_per_step", "first_step_s", "steps", "final_loss", "loss_last3"):
        table.add_row(key, str(summary["ours"][key]), str(summary["trl"][key]))
    table.add_row("load average (start / end)", *[" / ".join(str(x[0]) for x in sides[k]["load_average"])
                                                   for k in ("ours", "trl")])
    console = Console()
    console.print(machine_table("Machine and settings", {k: {**s["machine"], **s["settings"]}
                                                         for k, s in sides.items()}))
    console.print(table)
    console.print(f"ratio_vs_trl (tokens/s, ours / TRL), sft: {ratio:.2f}x")


if __name__ == "__main__":
    main()
