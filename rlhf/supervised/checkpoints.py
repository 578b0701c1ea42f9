"""Checkpoints of SFT, RM and DPO runs, kept by Ray Train.

Every `save_every` optimizer steps each rank writes its DeepSpeed shards (weights, AdamW moments,
learning-rate schedule, torch RNG) straight into the Ray Train run folder and the step is reported
as a checkpoint there (no second copy). Ray Train restores the latest one when a worker dies
(`train.max_failures`) or when the run is started again under the same name (`--resume`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

TAG = "state"


def batch_order(seed: int, step: int, batches: int) -> list[int]:
    """The order of the training batches in the epoch that holds optimizer step `step`: a new
    shuffle at each epoch's first step, applied to the previous epoch's order (so a resumed run
    replays the shuffles it skipped and draws exactly the batches an uninterrupted run draws)."""
    order = list(range(batches))
    for start in range(0, step + 1, batches):
        random.Random(seed + start).shuffle(order)
    return order


def save(engine, step: int, train_stats: dict, metrics: dict) -> None:
    """Collective: every rank writes its shards of step `step`, then all report the checkpoint."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    storage = ray.train.get_context().get_storage()
    name = f"checkpoint_step_{step:06d}"
    path = storage.build_checkpoint_path_from_name(name)
    client = {"step": step, "train_stats": train_stats, "torch_rng": torch.get_rng_state()}
    engine.save_checkpoint(path, tag=TAG, client_state=client)
    checkpoint = Checkpoint(path, filesystem=storage.storage_filesystem)
    ray.train.report({**metrics, "checkpoint_step": step}, checkpoint=checkpoint, checkpoint_dir_name=name,
                     checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def restore(engine) -> tuple[int, dict]:
    """Load the run's latest checkpoint into `engine` if Ray Train has one:
    (the optimizer step to continue from, the training stats of the step before it)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as folder:
        _, client = engine.load_checkpoint(folder, tag=TAG)
    if client is None or "step" not in client:
        raise RuntimeError(f"checkpoint {checkpoint.path} has no training state; delete it or run without --resume")
    torch.set_rng_state(client["torch_rng"])
    return int(client["step"]), dict(client["train_stats"])


def keep_rows(log: Path, last_step: int) -> None:
    """Drop the validation rows a resumed run will write again (those after `last_step`)."""
    if not log.exists():
        return
    rows = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    log.write_text("".join(f"{row}\n" for row in rows))
