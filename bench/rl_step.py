"""Time each phase of an RL step of `rlhf train` (default: examples/smollm2-grpo.yaml).

    .venv/bin/python bench/rl_step.py [CONFIG] [--steps N] [--against SETTING=VALUE ...] [overrides...]

Runs a short real training run, skips the first (warm-up) step, prints the mean seconds per
phase and its share of the step, and writes bench/results/rl_step.json. With `--against`, a
second run with those settings follows in the same invocation (a lever before and after, on the
same host), both tables are printed with the ratio of their step times, and the second run's
result goes under "against" in the JSON.
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


def run(config: str, steps: int, overrides: list[str]) -> tuple[dict, Table]:
    """One short `rlhf train`; its mean phase times over steps 2..N as a result and a table."""
    run_dir = Path(tempfile.mkdtemp(prefix="rl-step-")) / "run"
    cmd = [sys.executable, "-m", "rlhf.cli.main", "train", config, "--run-dir", str(run_dir),
           f"train.steps={steps}", "train.save_every=0", "train.export=false", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    phases = sorted({k for r in rows for k in r if k.startswith("timing/") and k != "timing/step"})
    step = sum(r["timing/step"] for r in rows) / len(rows)
    table = Table(title=f"RL step phases: {Path(config).name} {' '.join(overrides)}, mean of steps 2..{steps}")
    for col in ("phase", "seconds", "share"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    result = {"config": config, "overrides": overrides, "machine": machine(), "steps": steps,
              "step_seconds": step, "phases": {}}
    for key in phases:
        sec = sum(r.get(key, 0.0) for r in rows) / len(rows)
        result["phases"][key] = sec
        table.add_row(key.removeprefix("timing/"), f"{sec:.3f}", f"{100 * sec / step:.1f}%")
    table.add_row("step", f"{step:.3f}", "100%")
    result["samples_per_second"] = sum(r["perf/samples"] for r in rows) / sum(r["timing/step"] for r in rows)
    result["sync_share"] = result["phases"].get("timing/sync", 0.0) / step
    return result, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--against", nargs="*", default=[], help="settings of a second run to compare with")
    args, overrides = parser.parse_known_args()
    result, table = run(args.config, args.steps, overrides)
    console = Console()
    console.print(table)
    console.print(f"machine: {result['machine']}  samples/s: {result['samples_per_second']:.2f}  "
                  f"weight sync share: {100 * result['sync_share']:.1f}%")
    if args.against:
        other, other_table = run(args.config, args.steps, [*overrides, *args.against])
        console.print(other_table)
        ratio = other["step_seconds"] / result["step_seconds"]
        console.print(f"step time with {' '.join(args.against)}: {ratio:.2f}x the first run's "
                      f"({other['step_seconds']:.1f} s vs {result['step_seconds']:.1f} s)")
        result["against"] = {**other, "step_ratio": ratio}
    out = ROOT / "bench" / "results" / "rl_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
