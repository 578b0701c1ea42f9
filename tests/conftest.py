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


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """A random tiny Llama folder (built once, then reused from RLHF_CACHE)."""
    from rlhf.models.tiny import build_tiny_model

    return str(build_tiny_model(Path(os.environ["RLHF_CACHE"]) / "tiny-llama"))
