"""Shared pieces of the bench scripts: machine details, result files, timing summaries.

Standard library (plus rich for tables) only at import time: the TRL side imports this module
from its own venv, where the project's packages are not installed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
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
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
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
