"""SFT, reward-model and DPO training: DeepSpeed ZeRO-3 workers under Ray Train.

The driver tokenises everything once (`prepare_*`), a `TorchTrainer` runs `_worker` on N ranks
(gloo on CPU, nccl on GPUs), each rank trains on an equal shard, checkpoints every `save_every`
steps (`rlhf.supervised.checkpoints`), and rank 0 exports a Hugging Face folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rlhf.config.training import LoraConfig
from rlhf.config.tree import Config
from rlhf.config.workflow import FinetuneConfig
from rlhf.supervised import checkpoints
from rlhf.supervised.examples import PairExample, pad_batch, pair_batch, shard
from rlhf.supervised.objectives import bradley_terry_loss, dpo_loss, sequence_logprob, sft_loss

KINDS = ("sft", "rm", "dpo")


@dataclass
class FinetuneJob:
    """Everything a worker needs; pickled to each Ray Train worker."""

    kind: str  # sft | rm | dpo
    base_model: str  # folder to start from
    out_dir: str
    settings: FinetuneConfig  # the sft, rm or dpo section of the config
    lora: LoraConfig
    train: list = field(default_factory=list)  # TokenExample (sft) or PairExample (rm, dpo)
    val: list = field(default_factory=list)
    seed: int = 0
    eval_every: int = 0  # optimizer steps between validations (0: only at start and end)
    heldout_dropped: int = 0  # rows left out because they are held-out evaluation questions


def geometry(settings: FinetuneConfig) -> tuple[int, int]:
    """(micro-batch, accumulation steps) per worker for one optimizer step."""
    per_worker = max(1, settings.batch_size // settings.num_workers)
    micro = min(settings.micro_batch_size, per_worker)
    return micro, max(1, per_worker // micro)


def total_steps(job: FinetuneJob) -> int:
    micro, accum = geometry(job.settings)
    per_step = micro * accum * job.settings.num_workers
    steps = math.ceil(job.settings.epochs * len(job.train) / per_step)
    return min(steps, job.settings.max_steps) if job.settings.max_steps else max(1, steps)


# ----------------------------------------------------------------------------- worker


def stage_lora(job: FinetuneJob) -> LoraConfig | None:
    """The LoRA settings this stage trains with, None for a full fine-tune.

    `<stage>.lora: true` is the switch; model.lora gives r, alpha, dropout and target modules
    (its own `enabled` switches LoRA for the RL learner)."""
    return replace(job.lora, enabled=True) if job.settings.lora else None


def _model_builder(job: FinetuneJob):
    from rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer

    if job.kind == "rm":
        pad = load_tokenizer(job.base_model).pad_token_id
        return lambda: load_scalar_model(job.base_model, "float32", pad_token_id=pad)
    return lambda: load_causal_lm(job.base_model, "float32")


def rm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss of one pair batch (see `pair_batch`: input_ids [2B, L], chosen rows
    first, then rejected; margin [B]) on a scalar-head model (logits [2B, 1])."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    n = scores.shape[0] // 2
    # The rating margin (0 for unrated pairs) asks for a wider gap where answers differ more.
    loss, acc = bradley_terry_loss(scores[:n], scores[n:], batch["margin"])
    return loss, {"loss": float(loss), "accuracy": float(acc), "margin": float((scores[:n] - scores[n:]).mean())}


def _on(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The padded batch on the engine's device (batches are built on the CPU)."""
    return {k: v.to(device) for k, v in batch.items()}


def _loss(job: FinetuneJob, engine, items: list, pad_id: int, ref: torch.Tensor | None):
    """Loss and stats of one micro-batch (`ref`: DPO reference logprobs [2B], else None)."""
    if job.kind == "sft":
        batch = _on(pad_batch(items, pad_id), engine.device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, tokens = sft_loss(logits, batch["labels"])
        return loss, {"loss": float(loss), "tokens": tokens}
    batch = _on(pair_batch(items, pad_id), engine.device)
    if job.kind == "rm":
        return rm_loss(engine, batch)
    n = len(items)
    out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logp = sequence_logprob(out.logits, batch["labels"])
    loss, stats = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], job.settings.beta)
    return loss, {"loss": float(loss), "accuracy": stats["dpo/accuracy"], "margin": stats["dpo/margin"]}


@torch.no_grad()
def _reference_logprobs(engine, items: list[PairExample], micro: int, pad_id: int) -> list[torch.Tensor]:
    """DPO's reference = the initial policy: score every pair once before any update."""
    engine.eval()
    out = []
    for start in range(0, len(items), micro):
        chunk = items[start : start + micro]
        batch = _on(pair_batch(chunk, pad_id), engine.device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append(sequence_logprob(logits, batch["labels"]))
    return out


@torch.no_grad()
def _validate(job, engine, items, micro, pad_id, refs) -> dict:
    """Mean of each stat over this rank's validation shard, averaged over ranks."""
    import torch.distributed as dist

    engine.eval()
    sums: dict[str, float] = {}
    batches = [items[s : s + micro] for s in range(0, len(items), micro)]
    for i, chunk in enumerate(batches):
        _, stats = _loss(job, engine, chunk, pad_id, refs[i] if refs else None)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    keys = sorted(k for k in sums if k != "tokens")
    # On the engine's device: nccl reduces GPU tensors only.
    totals = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(len(batches))], device=engine.device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    engine.train()
    return {f"val/{k}": float(totals[i] / max(totals[-1], 1.0)) for i, k in enumerate(keys)}


def _worker(config: dict) -> None:
    job: FinetuneJob = config["job"]
    accelerator, backend = config["accelerator"]  # see rlhf.models.runtime.supervised_accelerator
    # Read when deepspeed is imported; set from the job, not inherited from the driver's shell.
    os.environ["DS_ACCELERATOR"] = accelerator
    import deepspeed
    import ray.train

    from rlhf.models.loading import load_tokenizer
    from rlhf.models.zero import build_engine, engine_config, gather_full_state, save_hf

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    deepspeed.init_distributed(dist_backend=backend)
    torch.manual_seed(job.seed)
    micro, accum = geometry(job.settings)
    config = engine_config(micro, accum, world, job.settings.zero_stage)
    lora = stage_lora(job)
    engine = build_engine(_model_builder(job), config, job.settings.lr, lora)
    tok = load_tokenizer(job.base_model)
    train = shard(job.train, rank, world, micro * accum)
    val = shard(job.val, rank, world, 1)  # equal shards; the last micro-batch may be short
    refs = val_refs = None
    if job.kind == "dpo":
        began = time.perf_counter()
        refs = _reference_logprobs(engine, train, micro, tok.pad_token_id)
        if rank == 0:  # step 0: the reference pass over the training pairs, outside the step times
            seconds = time.perf_counter() - began
            _write_progress(Path(job.out_dir), 0, total_steps(job), seconds, {"reference_s": seconds})
        val_refs = _reference_logprobs(engine, val, micro, tok.pad_token_id)
    # After the DPO reference pass: the reference is the initial model, not the checkpoint's.
    start, train_stats = checkpoints.restore(engine)
    _train_loop(job, engine, train, val, micro, accum, tok.pad_token_id, refs, val_refs, rank, start, train_stats)
    state = gather_full_state(engine.module, rank, lora)
    if rank == 0:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        model_class = AutoModelForSequenceClassification if job.kind == "rm" else AutoModelForCausalLM
        save_hf(state, _unwrap(engine.module).config, job.out_dir, tok, model_class)


def _unwrap(module):
    """The transformers model under a peft wrapper (exports are plain HF folders)."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def _train_loop(job, engine, train, val, micro, accum, pad_id, refs, val_refs, rank, start=0, train_stats=None):
    """Optimizer steps `start`..end; a validation row every `eval_every` steps (and at the end),
    a checkpoint every `save_every`. A resumed run keeps the rows up to `start` and writes the rest."""
    import ray.train

    steps = total_steps(job)
    per_step = micro * accum
    batches = max(1, len(train) // per_step)
    log = Path(job.out_dir) / "metrics.jsonl"
    every = job.eval_every or max(1, steps // 4)
    save_every = job.settings.save_every
    metrics = _resumed(log, start, rank)
    started = time.perf_counter() - metrics.get("seconds", 0.0)
    train_stats = train_stats or {}
    order = checkpoints.batch_order(job.seed, start, batches)
    for step in range(start, steps + 1):
        validate = (step % every == 0 or step == steps) and not (step == start > 0)  # a resumed row exists
        if validate:
            metrics = {"step": step, **_validate(job, engine, val, micro, pad_id, val_refs),
                       "seconds": time.perf_counter() - started, **train_stats}
            if rank == 0:
                with log.open("a") as f:
                    f.write(json.dumps(metrics) + "\n")
        if save_every and step % save_every == 0 and start < step < steps:
            checkpoints.save(engine, step, train_stats, metrics)
        elif validate:
            ray.train.report(metrics)
        if step == steps:
            break
        if step % batches == 0:
            order = checkpoints.batch_order(job.seed, step, batches)  # a new epoch, same order on every rank
        b = order[step % batches]
        train_stats = _optimizer_step(job, engine, train[b * per_step : (b + 1) * per_step], micro, pad_id,
                                      refs[b * accum : (b + 1) * accum] if refs else None)
        if rank == 0:
            _write_progress(Path(job.out_dir), step + 1, steps, time.perf_counter() - started, train_stats)


def _resumed(log: Path, start: int, rank: int) -> dict:
    """The last validation row up to `start` (a resumed run goes on from it), {} on a fresh run."""
    if start == 0 or rank != 0:
        return {}  # only rank 0's metrics are kept
    checkpoints.keep_rows(log, start)
    rows = log.read_text().splitlines() if log.exists() else []
    return json.loads(rows[-1]) if rows else {}


def _write_progress(out: Path, step: int, steps: int, seconds: float, stats: dict) -> None:
    """Where training is, for the driver's progress lines (replaced atomically every step)."""
    tmp = out / "progress.json.tmp"
    tmp.write_text(json.dumps({"step": step, "steps": steps, "seconds": seconds, **stats}))
    tmp.replace(out / "progress.json")


def _optimizer_step(job, engine, items, micro, pad_id, refs) -> dict:
    sums: dict[str, float] = {}
    for i, start in enumerate(range(0, len(items), micro)):
        loss, stats = _loss(job, engine, items[start : start + micro], pad_id, refs[i] if refs else None)
        engine.backward(loss)
        engine.step()
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v / max(1, len(items) // micro)
    return {f"train/{k}": v for k, v in sums.items() if k != "tokens"}


# ----------------------------------------------------------------------------- driver


def run_finetune(job: FinetuneJob, cfg: Config, callbacks: list | None = None,
                 log: Callable[[str], None] | None = None, resume: bool = False,
                 max_failures: int | None = None) -> list[dict]:
    """Run `job` on Ray Train; returns the validation rows (also in out_dir/metrics.jsonl).
    `callbacks`: Ray Train callbacks, e.g. Tune's TuneReportCallback inside a sweep's trial.
    `log`: gets a progress line every few seconds while the steps advance.
    `resume`: continue from the last checkpoint of the run in out_dir (else start afresh).
    `max_failures`: worker deaths Ray Train recovers from (default train.max_failures; a sweep's
    trial passes 0: a trial that Tune stops kills its workers, and Tune owns its retries)."""
    import ray

    from rlhf.cluster.session import start_local

    if len(job.train) < job.settings.num_workers * geometry(job.settings)[0] * geometry(job.settings)[1]:
        raise ValueError(f"{job.kind}: {len(job.train)} training examples are fewer than one batch "
                         f"({job.settings.batch_size}); add data or lower {job.kind}.batch_size")
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_run(job, out, resume, log or (lambda _: None))
    workers_cpus = job.settings.num_workers * job.settings.cpus_per_worker
    started_ray = start_local(max(os.cpu_count() or 1, workers_cpus + 1))
    stop = threading.Event()
    watcher = threading.Thread(target=_report_progress, args=(job.kind, out, log, stop), daemon=True)
    if log is not None:
        watcher.start()
    try:
        retries = cfg.train.max_failures if max_failures is None else max_failures
        result = _fit(job, cfg, out, callbacks or [], retries)
    finally:
        stop.set()
        if started_ray:
            ray.shutdown()  # the next stage sizes its own local Ray (see rlhf.cluster.session)
    if result.error:
        raise RuntimeError(f"{job.kind} training failed: {result.error}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_run_dir(job: FinetuneJob) -> Path:
    """Ray Train's folder for the run that writes `job.out_dir` (beside it, so the export stays a
    clean HF folder): its checkpoints and the snapshot Ray Train restores them from."""
    out = Path(job.out_dir).resolve()
    return out.parent / ".ray-train" / f"{out.name}-{job.kind}"


def _prepare_run(job: FinetuneJob, out: Path, resume: bool, log: Callable[[str], None]) -> None:
    run_dir = train_run_dir(job)
    if resume:
        latest = last_checkpoint(run_dir)
        log(f"[{job.kind}] resuming from {latest}" if latest
            else f"[{job.kind}] no checkpoint in {run_dir}; starting from step 0")
        if latest:
            return
    shutil.rmtree(run_dir, ignore_errors=True)  # Ray Train would restore whatever it finds there
    (out / "metrics.jsonl").unlink(missing_ok=True)
    (out / "progress.json").unlink(missing_ok=True)


def last_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint Ray Train restores the run from (the latest it recorded: a folder written
    just before a crash but never reported is not one), None when there is none."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


def _report_progress(kind: str, out: Path, log: Callable[[str], None], stop: threading.Event,
                     every: float = 10.0) -> None:
    last = 0
    while not stop.wait(every):
        try:
            p = json.loads((out / "progress.json").read_text())
        except (OSError, ValueError):
            continue  # not started yet
        if p["step"] != last:
            last = p["step"]
            loss = f", train loss {p['train/loss']:.4f}" if "train/loss" in p else ""
            log(f"[{kind}] step {p['step']}/{p['steps']}{loss}, {p['seconds']:.0f} s")


def _fit(job: FinetuneJob, cfg: Config, out: Path, callbacks: list, max_failures: int):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlhf.models.runtime import supervised_accelerator

    accelerator, backend = supervised_accelerator(cfg)
    # Ray Train's controller polls its workers every 2 s by default, and each `report` (one per
    # validation) and the end of training wait for that poll; at 0.25 s a tiny SFT run takes 19 s
    # instead of 32 s (bench/README.md). Propagated by Ray Train to its controller; yours wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    if not (cfg.resources.address or os.environ.get("RAY_ADDRESS")):
        # A local Ray is one node that no cloud can preempt: Ray Train's preemption watcher
        # would only be one more actor process to start per run. Clusters keep it.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job, "accelerator": (accelerator, backend)},
        # use_gpu gives each worker one whole GPU beside its CPU.
        scaling_config=ScalingConfig(num_workers=job.settings.num_workers, use_gpu=cfg.resources.use_gpu,
                                     resources_per_worker={"CPU": job.settings.cpus_per_worker}),
        torch_config=TorchConfig(backend=backend),
        # A dead worker restarts the group from the last checkpoint, max_failures times.
        run_config=RunConfig(name=train_run_dir(job).name, storage_path=str(train_run_dir(job).parent),
                             callbacks=callbacks, checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()
