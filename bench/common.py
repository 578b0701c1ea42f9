"""Shared pieces of the bench scripts: machine details, result files, timing summaries.

Standard library (plus rich for tables) only at import time: the TRL side imports this module
from its own venv, where the project's packages are not installed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The CPU flags that decide how fast torch and vLLM run on the CPU (native bf16 or not)."""


def cpu_flags() -> str:
    """Which of SIMD_FLAGS this CPU has, space-separated ("" where /proc/cpuinfo is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in SIMD_FLAGS if f in have)
    except OSError:
        pass
    return ""


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(**extra) -> dict:
    """What the numbers were measured on; `extra` adds library versions of one side."""
    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info.update(extra)
    return info


def versions(*packages: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def machine_table(title: str, sides: dict[str, dict]):
    """Machine details of each side, side by side (a rich Table)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("machine")
    for name in sides:
        table.add_column(name)
    keys = []
    for info in sides.values():
        keys += [k for k in info if k not in keys]
    for key in keys:
        table.add_row(key, *[str(info.get(key, "")) for info in sides.values()])
    return table


TRL_CPU_ARGS = {"use_cpu": True, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
                "disable_tqdm": True}
"""Training arguments every TRL side shares: on the CPU, a log row per step, nothing saved."""


def run_trl_side(script: str, workload: dict, python: str) -> dict:
    """Run bench/<script> in TRL's venv (bench/setup_trl.sh) on `workload`; its JSON result."""
    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run `bash bench/setup_trl.sh` first")
    with tempfile.TemporaryDirectory(prefix="trl-side-") as tmp:
        work, out = Path(tmp) / "workload.json", Path(tmp) / "result.json"
        work.write_text(json.dumps(workload))
        subprocess.run([python, str(ROOT / "bench" / script), str(work), str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=sys.stdout, stderr=sys.stderr)
        return json.loads(out.read_text())


def trl_clock(marks: dict, log_key: str):
    """A transformers TrainerCallback that fills `marks`: `train_begin` and `step_end` (the
    perf_counter at the start of training and at the end of every optimizer step) and `logs`
    (every logged row that holds `log_key`)."""
    import time

    from transformers import TrainerCallback

    marks.update(step_end=[], logs=[])

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["train_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and log_key in logs:
                marks["logs"].append(dict(logs))

    return Clock()
