"""Time each phase of an RL step of `rlhf train` (default: examples/smollm2-grpo.yaml).

    .venv/bin/python bench/rl_step.py [CONFIG] [--steps N] [overrides...]

Runs a short real training run, skips the first (warm-up) step, prints the mean seconds per
phase and its share of the step, and writes bench/results/rl_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    args, overrides = parser.parse_known_args()
    run_dir = Path(tempfile.mkdtemp(prefix="rl-step-")) / "run"
    cmd = [sys.executable, "-m", "rlhf.cli.main", "train", args.config, "--run-dir", str(run_dir),
           f"train.steps={args.steps}", "train.save_every=0", "train.export=false", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    phases = sorted({k for r in rows for k in r if k.startswith("timing/") and k != "timing/step"})
    step = sum(r["timing/step"] for r in rows) / len(rows)
    table = Table(title=f"RL step phases: {Path(args.config).name}, mean of steps 2..{args.steps}")
    for col in ("phase", "seconds", "share"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    result = {"config": args.config, "machine": machine(), "steps": args.steps, "step_seconds": step, "phases": {}}
    for key in phases:
        sec = sum(r.get(key, 0.0) for r in rows) / len(rows)
        result["phases"][key] = sec
        table.add_row(key.removeprefix("timing/"), f"{sec:.3f}", f"{100 * sec / step:.1f}%")
    table.add_row("step", f"{step:.3f}", "100%")
    samples = sum(r["perf/samples"] for r in rows) / sum(r["timing/step"] for r in rows)
    result["samples_per_second"] = samples
    result["sync_share"] = result["phases"].get("timing/sync", 0.0) / step
    Console().print(table)
    Console().print(f"machine: {result['machine']}  samples/s: {samples:.2f}  "
                    f"weight sync share: {100 * result['sync_share']:.1f}%")
    out = ROOT / "bench" / "results" / "rl_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
