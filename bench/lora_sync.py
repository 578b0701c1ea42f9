"""Full fine-tuning against LoRA (rank 8 and 32) in RL, side by side in one run: bytes and
seconds of each weight sync, learner update time, peak memory of each role, and reward after
the same wall time.

    .venv/bin/python bench/lora_sync.py [--config examples/smollm2-grpo.yaml] [--steps 12]
        [--variants full,lora8,lora32] [overrides...]

Each variant is one `rlhf train` from the same model, seed and prompts; a sampler thread reads
the resident memory of every Ray actor process of the run (`ray::<Role>` in its command line)
twice a second and keeps each role's peak. With LoRA only the adapter is synced and the
reference is the rollout engine's base weights (no reference actor). Writes
bench/results/lora_sync.json and bench/results/lora_sync.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, machine, write_result  # noqa: E402

ALL_LINEAR = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
# LoRA takes a learning rate about 10x full fine-tuning's (Schulman et al., "LoRA Without
# Regret", 2025); both sides otherwise run the config as it is.
VARIANTS = {
    "full": [],
    "lora8": ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16",
              f"model.lora.target_modules={ALL_LINEAR}"],
    "lora32": ["model.lora.enabled=true", "model.lora.r=32", "model.lora.alpha=64",
               f"model.lora.target_modules={ALL_LINEAR}"],
}
ROLES = ("RolloutActor", "LearnerRank", "ReferenceActor", "RewardActor")


class PeakMemory(threading.Thread):
    """Peak RSS (MiB) per role over the Ray actor processes alive while it runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for role, mib in self.sample().items():
                self.peak[role] = max(self.peak.get(role, 0.0), mib)

    @staticmethod
    def sample() -> dict[str, float]:
        out: dict[str, float] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                role = next((r for r in ROLES if f"ray::{r}" in cmd), None)
                if role is None:
                    continue
                rss_kib = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            out[role] = out.get(role, 0.0) + rss_kib / 1024  # summed over a role's processes
        return out


def run_variant(config: str, steps: int, name: str, lr_scale: float, base_lr: float, overrides: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"lora-sync-{name}-")) / "run"
    lr = base_lr * (lr_scale if name != "full" else 1.0)
    cmd = [sys.executable, "-m", "rlhf.cli.main", "train", config, "--run-dir", str(run_dir),
           f"train.steps={steps}", "train.save_every=0", "train.export=false", f"learner.lr={lr}",
           *VARIANTS[name], *overrides]
    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    memory.done.set()
    memory.join()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"variant": name, "lr": lr, "wall_seconds": wall, "rows": rows,
            "peak_rss_mib": {k: round(v) for k, v in memory.peak.items()}}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(run: dict, budget: float) -> dict:
    """Per-step means over steps 2.. (step 1 warms up), and the reward reached within `budget`
    seconds of training (mean of the last 3 steps that finished by then)."""
    rows, later = run["rows"], run["rows"][1:] or run["rows"]
    clock, within = 0.0, []
    for row in rows:
        clock += row["timing/step"]
        if clock <= budget + 1e-6:
            within.append(row["reward/mean"])
    return {
        "sync_bytes": mean([r["perf/sync_bytes"] for r in later]),
        "sync_seconds": mean([r["timing/sync"] for r in later]),
        "update_seconds": mean([r["timing/update"] for r in later]),
        "step_seconds": mean([r["timing/step"] for r in later]),
        "probe_max": max(r.get("rollout/logprob_diff", 0.0) for r in rows),
        "reward_first": rows[0]["reward/mean"],
        "reward_at_budget": mean(within[-3:]),
        "steps_in_budget": len(within),
        "kl_last": rows[-1]["objective/kl"],
    }


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run in runs:
        clock, xs, ys = 0.0, [], []
        for row in run["rows"]:
            clock += row["timing/step"]
            xs.append(clock)
            ys.append(row["reward/mean"])
        ax.plot(xs, ys, marker="o", label=run["variant"])
    ax.set_xlabel("training seconds")
    ax.set_ylabel("reward/mean")
    ax.set_title("RL reward against wall time: full fine-tuning vs LoRA")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variants", default="full,lora8,lora32")
    parser.add_argument("--base-lr", type=float, default=2e-6, help="full fine-tuning's learner.lr")
    parser.add_argument("--lora-lr-scale", type=float, default=10.0)
    args, overrides = parser.parse_known_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    console = Console()
    console.print(f"machine: {machine()}  load: {load_average()}")
    runs = [run_variant(args.config, args.steps, n, args.lora_lr_scale, args.base_lr, overrides) for n in names]
    budget = min(sum(r["timing/step"] for r in run["rows"]) for run in runs)
    table = Table(title=f"full vs LoRA, {Path(args.config).name}, {args.steps} steps "
                        f"(means over steps 2..; reward within {budget:.0f} s of training)")
    for col in ("variant", "lr", "sync MB", "sync s", "update s", "step s", "probe max",
                "reward step 1", "reward @budget", "peak MiB rollout/learner/reference"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    result = {"config": args.config, "steps": args.steps, "machine": machine(), "load": load_average(),
              "budget_seconds": budget, "variants": {}}
    for run in runs:
        s = summarise(run, budget)
        peak = run["peak_rss_mib"]
        result["variants"][run["variant"]] = {**s, "lr": run["lr"], "wall_seconds": run["wall_seconds"],
                                              "peak_rss_mib": peak}
        table.add_row(run["variant"], f"{run['lr']:g}", f"{s['sync_bytes'] / 1e6:.2f}", f"{s['sync_seconds']:.2f}",
                      f"{s['update_seconds']:.2f}", f"{s['step_seconds']:.2f}", f"{s['probe_max']:.2g}",
                      f"{s['reward_first']:.3f}", f"{s['reward_at_budget']:.3f} ({s['steps_in_budget']} steps)",
                      "/".join(str(peak.get(r, 0)) for r in ROLES[:3]))
    console.print(table)
    write_result("lora_sync", result)
    plot(runs, ROOT / "bench" / "results" / "lora_sync.png")
    console.print(f"wrote bench/results/lora_sync.json and bench/results/lora_sync.png  load: {load_average()}")


if __name__ == "__main__":
    main()
