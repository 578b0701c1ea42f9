"""Run directory bookkeeping: metrics JSONL, TensorBoard events, plots, phase timers."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

PLOTTED = ("reward/mean", "objective/kl", "objective/entropy")


class Timer:
    """Wall-clock seconds per phase, reported as `timing/<phase>`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        out = {f"timing/{k}": v for k, v in self.seconds.items()}
        out["timing/step"] = sum(self.seconds.values())
        return out


class MetricsLog:
    """One JSON object per step in metrics.jsonl, mirrored to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        if self.path.exists():
            # Drop lines from steps after the checkpoint we resumed from (all of them when a run
            # restarts from scratch after a failure before its first checkpoint).
            kept = [row for row in self.path.read_text().splitlines() if row and json.loads(row)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; this only guards odd installs
            self.tb = None

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_metrics(rows: list[dict], out: Path, keys: tuple[str, ...] = PLOTTED) -> Path | None:
    """A PNG with one panel per metric over steps."""
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
