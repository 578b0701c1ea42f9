"""Supervised stages against TRL: our SFT, RM and DPO (Ray Train + DeepSpeed) and TRL's
SFTTrainer, RewardTrainer and DPOTrainer, same run.

    .venv/bin/python bench/finetune_throughput.py [--config examples/support-qa.yaml] [--steps 12]
        [--stages sft,rm,dpo] [--trl-python bench/.venv-trl/bin/python] [overrides...]

Both sides of a stage train the stage's model (`<stage>.base_model`, else `model.path`) on the
examples our stage builds (bench/trl_finetune.py gets them tokenised, so it trains on the very
same tokens), with the same batch (`<stage>.batch_size`, micro-batches of
`<stage>.micro_batch_size`), learning rate (constant on both), steps and dtype (`model.dtype`).
  sft: `sft.data` (chat template, answer-only loss, `sft.max_length`);
  rm, dpo: preference pairs made from `data.train`'s questions, the reference answer chosen and
       another question's answer of the same type rejected (the pipeline's pairs stage would need
       a sampling engine first; the tokens per pair are what matter here).
Ours runs as the pipeline's stage does (`<stage>.num_workers` Ray Train workers of
`<stage>.cpus_per_worker` CPUs, ZeRO `<stage>.zero_stage`), validating only before and after
the measured steps; TRL in one process of its own venv (bench/setup_trl.sh), which uses both
cores, and never validates.

Tokens per second count real (not padding) tokens: steps x batch x the mean tokens of an
example (a pair: chosen plus rejected), over the steady part of the run (the end of step 1 to the
end of step N; start-up and the first step are reported apart). DPO: TRL runs its reference
model every step; ours scores every training pair once before the first step, so that pass is
added to our steps pro rata (its seconds x batch / training pairs). Writes
bench/results/finetune_throughput.json with `ratio_vs_trl` (ours over TRL's tokens per second)
for each stage measured.
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

STAGES = ("sft", "rm", "dpo")


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "support-qa.yaml"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of sft, rm, dpo")
    p.add_argument("--trl-python", default=str(ROOT / "bench" / ".venv-trl" / "bin" / "python"))
    args, overrides = p.parse_known_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := [s for s in args.stages if s not in STAGES]:
        p.error(f"--stages: unknown {', '.join(unknown)}; valid: {', '.join(STAGES)}")
    return args, overrides


def stage_config(args, overrides: list[str], stage: str):
    from rlhf.config.tree import load_config

    return load_config(args.config, [*overrides, f"{stage}.max_steps={args.steps}", f"{stage}.epochs=100"])


# ----------------------------------------------------------------------------- examples


def bench_pairs(cfg, stage: str, steps: int, out: Path) -> Path:
    """Preference pairs from `data.train`'s questions: the reference answer chosen, the next
    question's answer of the same type (and a different answer) rejected; enough for `steps`
    batches after the validation share."""
    import pyarrow as pa

    from rlhf.data.tables import load_source, save

    settings = getattr(cfg, stage)
    wanted = int(steps * settings.batch_size / (1 - settings.val_fraction) * 1.2) + 16
    rows = load_source(cfg.data.train, "prompts", cfg.data.fields, max(wanted * 2, 256), cfg.data.seed).table
    rows = rows.to_pylist()
    pairs = []
    for i, row in enumerate(rows):
        other = next((r for r in rows[i + 1:] + rows[:i] if r.get("type") == row.get("type")
                      and r["reference"] != row["reference"]), None)
        if other is not None:
            pairs.append({"prompt": row["question"], "chosen": row["reference"], "rejected": other["reference"]})
        if len(pairs) == wanted:
            break
    save(pa.Table.from_pylist(pairs), out)
    return out


def stage_job(cfg, stage: str, steps: int, tmp: Path):
    from rlhf.supervised.inputs import pair_job, sft_job

    base = getattr(cfg, stage).base_model or cfg.model.path
    if stage == "sft":
        job = sft_job(cfg, base, tmp / stage)
    else:
        job = pair_job(stage, cfg, base, [str(bench_pairs(cfg, stage, steps, tmp / f"{stage}-pairs.jsonl"))],
                       tmp / stage)
    job.eval_every = steps  # validation before step 1 and after step N, outside the measured steps
    return job


def trl_examples(stage: str, train: list) -> list[dict]:
    """Our tokenised examples in the columns TRL's trainer reads (bench/trl_finetune.py)."""
    from rlhf.supervised.objectives import IGNORE

    if stage == "sft":
        return [{"input_ids": e.input_ids, "completion_mask": [int(x != IGNORE) for x in e.labels]} for e in train]
    if stage == "rm":
        return [{"chosen_ids": p.chosen.input_ids, "rejected_ids": p.rejected.input_ids} for p in train]
    out = []
    for p in train:
        prompt = sum(1 for x in p.chosen.labels if x == IGNORE)  # labels mask the prompt tokens
        out.append({"prompt_ids": p.chosen.input_ids[:prompt], "chosen_ids": p.chosen.input_ids[prompt:],
                    "rejected_ids": p.rejected.input_ids[prompt:]})
    return out


def example_tokens(stage: str, train: list) -> list[int]:
    if stage == "sft":
        return [len(e.input_ids) for e in train]
    return [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in train]


# ----------------------------------------------------------------------------- the two sides


def watch_progress(out: Path, seen: dict, stop: threading.Event) -> None:
    """Every step's worker-side seconds and train loss, from the run's progress.json (step 0:
    DPO's reference pass)."""
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
    reference = seen.pop(0, {}).get("seconds")
    steps = [seen[k] for k in sorted(seen)]
    s = job.settings
    return {"step_seconds": [x["seconds"] for x in steps], "loss": [x["loss"] for x in steps], "wall": wall,
            "reference_s": reference, "load_average": [load_start, load_average()],
            "machine": machine(**versions("ray", "deepspeed", "transformers")),
            "settings": {"workers": s.num_workers, "cpus_per_worker": s.cpus_per_worker,
                         "zero_stage": s.zero_stage, "dtype": cfg.model.dtype}}


def run_trl(workload: dict, python: str) -> dict:
    result = run_trl_side("trl_finetune.py", workload, python)
    result["step_seconds"] = [e - result["train_begin"] for e in result["step_end"]]
    return result


def summarise(side: dict, tokens_per_step: float, reference_per_step: float = 0.0) -> dict:
    t = side["step_seconds"]
    steady = ((t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else t[0]) + reference_per_step
    losses = [x for x in side["loss"] if x is not None]
    return {"steps": len(t), "first_step_s": round(t[0], 2), "s_per_step": round(steady, 3),
            "tokens_per_s": round(tokens_per_step / steady, 1), "final_loss": round(losses[-1], 4) if losses else None,
            "loss_last3": round(sum(losses[-3:]) / len(losses[-3:]), 4) if losses else None}


def bench_stage(args, overrides: list[str], stage: str) -> dict:
    cfg = stage_config(args, overrides, stage)
    s = getattr(cfg, stage)
    with tempfile.TemporaryDirectory(prefix=f"finetune-{stage}-") as tmp:
        job = stage_job(cfg, stage, args.steps, Path(tmp))
        lengths = example_tokens(stage, job.train)
        tokens_per_step = s.batch_size * sum(lengths) / len(lengths)
        print(f"[{stage}] {len(job.train)} examples, {sum(lengths) / len(lengths):.1f} tokens each on average; "
              f"{args.steps} steps of {s.batch_size}", flush=True)
        sides = {"ours": run_ours(cfg, job)}
    workload = {"root": str(ROOT), "stage": stage, "model_path": job.base_model,
                "examples": trl_examples(stage, job.train), "steps": args.steps, "batch_size": s.batch_size,
                "micro_batch_size": s.micro_batch_size, "lr": s.lr, "beta": s.beta, "max_length": s.max_length,
                "seed": cfg.data.seed, "bf16": cfg.model.dtype == "bfloat16"}
    sides["trl"] = run_trl(workload, args.trl_python)
    reference = (sides["ours"]["reference_s"] or 0.0) * s.batch_size / len(job.train)
    summary = {"ours": summarise(sides["ours"], tokens_per_step, reference),
               "trl": summarise(sides["trl"], tokens_per_step)}
    if stage == "dpo":
        summary["ours"]["reference_s_per_step"] = round(reference, 3)
    return {"stage": stage, "summary": summary, "sides": sides, "tokens_per_step": tokens_per_step,
            "ratio": summary["ours"]["tokens_per_s"] / summary["trl"]["tokens_per_s"],
            "settings": {"examples": len(job.train), "batch_size": s.batch_size,
                         "micro_batch_size": s.micro_batch_size, "max_length": s.max_length, "lr": s.lr,
                         "tokens_per_step": round(tokens_per_step, 1), "model": job.base_model}}


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    results = [bench_stage(args, overrides, stage) for stage in args.stages]
    report(results)
    write_result("finetune_throughput", {
        "settings": {"config": args.config, "overrides": overrides, "steps": args.steps},
        "ratio_vs_trl": {r["stage"]: round(r["ratio"], 3) for r in results},
        "stages": {r["stage"]: {**r["summary"], "settings": r["settings"]} for r in results},
        "sides": {r["stage"]: {k: {kk: v for kk, v in side.items()
                                   if kk in ("machine", "settings", "load_average", "wall", "reference_s")}
                               for k, side in r["sides"].items()} for r in results}})


TRL_NAMES = {"sft": "SFTTrainer", "rm": "RewardTrainer", "dpo": "DPOTrainer"}


def report(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    first = results[0]["sides"]
    console.print(machine_table("Machine", {k: s["machine"] for k, s in first.items()}))
    for r in results:
        stage, summary, sides = r["stage"], r["summary"], r["sides"]
        table = Table(title=f"{stage.upper()}: ours vs TRL {TRL_NAMES[stage]}, same examples and host")
        table.add_column("metric")
        table.add_column("ours (Ray Train + DeepSpeed)", justify="right")
        table.add_column(f"TRL {TRL_NAMES[stage]}", justify="right")
        for key in ("tokens_per_s", "s_per_step", "first_step_s", "steps", "final_loss", "loss_last3"):
            table.add_row(key, str(summary["ours"][key]), str(summary["trl"][key]))
        if stage == "dpo":
            table.add_row("reference pass per step (in s_per_step)", str(summary["ours"]["reference_s_per_step"]),
                          "(every step)")
        table.add_row("settings", ", ".join(f"{k} {v}" for k, v in sides["ours"]["settings"].items()),
                      ", ".join(f"{k} {v}" for k, v in sides["trl"]["settings"].items()))
        table.add_row("load average (start / end)", *[" / ".join(str(x[0]) for x in sides[k]["load_average"])
                                                       for k in ("ours", "trl")])
        console.print(table)
    for r in results:
        console.print(f"ratio_vs_trl (tokens/s, ours / TRL), {r['stage']}: {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
