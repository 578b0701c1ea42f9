"""Shared test set-up: offline, CPU-only, small vLLM KV cache, and one cached tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Before anything imports transformers, vLLM, DeepSpeed or Ray: these are read at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The same cache `make` uses, so tests and the demo share prepared models.
os.environ.setdefault("RLHF_CACHE", str(REPO / ".cache"))
# DeepSpeed's compiled CPU ops live with the venv that built them (see scripts/setup.sh).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch-extensions"))


# Modules that take minutes go first, so a broken end-to-end path fails early in `make test`.
# Order inside a module is kept.
LONG_FIRST = ("tests/serve/test_serve.py", "tests/actors/test_rl.py", "tests/rlhf/pipeline/test_pipeline.py",
              "tests/tune/", "tests/rlhf/human/test_review.py", "tests/rlhf/supervised/test_finetune.py",
              "tests/rlhf/evaluation/test_evaluate.py", "tests/rlhf/redteam/test_redteam.py",
              "tests/rlhf/models/test_models.py", "tests/rlhf/cluster/test_jobs.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        return next((n for n, prefix in enumerate(LONG_FIRST) if path.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the order inside each module stays


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """A random tiny Llama folder (built once, then reused from RLHF_CACHE; test workers that
    start together take turns, so none reads a half-written folder)."""
    import fcntl

    from rlhf.models.tiny import build_tiny_model

    cache = Path(os.environ["RLHF_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".tiny-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(build_tiny_model(cache / "tiny-llama"))


def _role_pids(role_class: str) -> list[int]:
    """Actor processes of this class (Ray titles them `ray::<Class>[.method]`), without the
    children they fork (which inherit the title)."""
    found: dict[int, int] = {}  # pid -> parent pid
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"ray::{role_class}".encode() in (proc / "cmdline").read_bytes():
                found[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return [pid for pid, parent in found.items() if parent not in found]


@pytest.fixture(scope="session")
def role_pids():
    """`role_pids("RolloutActor")`: the pids of a Ray actor class's processes, to kill -9 them."""
    return _role_pids
