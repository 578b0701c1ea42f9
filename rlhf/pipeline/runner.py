"""`rlhf pipeline`: SFT -> preference pairs -> reward model -> (DPO) -> RL -> evaluation.

Each stage writes an artifact folder with a `manifest.json` (inputs and their hashes, the
config it ran with, metrics, seconds) that the next stage reads, the way teams hand a model to
each other. A rerun skips a stage whose input fingerprint is unchanged. The RL stage runs Ray
actors; its runner is handed in by the CLI so this module stays below the actor layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhf.config.tree import Config
from rlhf.config.typed_yaml import to_dict
from rlhf.models.loading import resolve_model_path
from rlhf.pipeline.stages import PIPELINE_STAGES

STAGES = PIPELINE_STAGES.names()  # in the order they run


class StageError(RuntimeError):
    """A stage cannot run: its input artifact is missing or from a different model."""


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """Hash of a file, or of every file in a folder (names and bytes)."""
    p, h = Path(path), hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@dataclass
class Artifact:
    stage: str
    folder: Path
    manifest: dict

    @property
    def output(self) -> Path:
        return self.folder / self.manifest["output"]


class Pipeline:
    """Runs the configured stages (rlhf/pipeline/stages.py) in order.

    `run_training(cfg, run_dir=...)` runs RL on Ray actors; the CLI hands it in so this package
    stays below the actor layer."""

    def __init__(self, cfg: Config, run_dir: Path, run_training: Callable | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.run_training, self.log = cfg, Path(run_dir), run_training, log
        self.base_model = resolve_model_path(cfg.model.path)
        self.artifacts: dict[str, Artifact] = {}
        self.running = ""  # the stage being run now

    # ------------------------------------------------------------------------- lineage

    def current_policy(self) -> str:
        """The output of the newest model-producing stage before the running one (a rerun must
        not pick up a later stage's artifact from last time), else the base model."""
        before = STAGES[: STAGES.index(self.running)] if self.running else STAGES
        for stage in reversed(before):
            if PIPELINE_STAGES[stage].produces_policy and stage in self.artifacts and stage in self.cfg.pipeline.stages:
                return str(self.artifacts[stage].output)
        return self.base_model

    def need(self, stage: str, wanted: str) -> Artifact:
        """The artifact `wanted` that `stage` reads; it must exist and descend from our model."""
        art = self.artifacts.get(wanted) or self._load_existing(wanted)
        if art is None:
            raise StageError(f"stage '{stage}' needs the '{wanted}' artifact in {self.run_dir / wanted}, which "
                             f"is missing; add '{wanted}' to pipeline.stages or run it first")
        if art.manifest.get("base_model") != self.base_model:
            raise StageError(f"stage '{stage}': the '{wanted}' artifact was made from "
                             f"{art.manifest.get('base_model')}, but model.path is {self.base_model}")
        return art

    def _load_existing(self, stage: str) -> Artifact | None:
        path = self.run_dir / stage / "manifest.json"
        if not path.is_file():
            return None
        art = Artifact(stage, path.parent, json.loads(path.read_text()))
        self.artifacts[stage] = art
        return art

    # ------------------------------------------------------------------------- running

    def stage_inputs(self, stage: str) -> dict:
        """What a stage depends on: its config and the hashes of the artifacts it reads."""
        cfg = to_dict(self.cfg)
        spec = PIPELINE_STAGES[stage]
        inputs = {"config": {k: cfg[k] for k in spec.sections}, "base_model": self.base_model}
        for upstream in spec.upstream:
            if upstream in self.artifacts and upstream in self.cfg.pipeline.stages:
                inputs[upstream] = self.artifacts[upstream].manifest["output_hash"]
        return inputs

    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.cfg.pipeline.stages:
            self.run_stage(stage)
        return {s: a.manifest for s, a in self.artifacts.items()}

    def run_stage(self, stage: str) -> Artifact:
        folder = self.run_dir / stage
        inputs = self.stage_inputs(stage)
        key = fingerprint(inputs)
        previous = self._load_existing(stage)
        if previous and previous.manifest.get("fingerprint") == key and previous.output.exists():
            self.log(f"[{stage}] inputs unchanged since {previous.manifest['finished']}: skipped")
            return previous
        self.log(f"[{stage}] running")
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.running = stage
        try:
            output, metrics = PIPELINE_STAGES[stage].run(self, folder)
        finally:
            self.running = ""
        manifest = {"stage": stage, "fingerprint": key, "inputs": inputs, "base_model": self.base_model,
                    "output": str(Path(output).relative_to(folder)), "output_hash": file_hash(output),
                    "metrics": metrics, "seconds": round(time.perf_counter() - started, 1),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        art = Artifact(stage, folder, manifest)
        self.artifacts[stage] = art
        self.log(f"[{stage}] done in {manifest['seconds']:.0f} s")
        return art

    def stage_config(self, **changes) -> Config:
        """A copy of the config with some sections replaced (e.g. the policy path for RL)."""
        return dataclasses.replace(self.cfg, **changes)
