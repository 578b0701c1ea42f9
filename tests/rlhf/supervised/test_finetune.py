"""Supervised stages: losses by hand, and RM / DPO on tiny models through Ray Train.

SFT's run on Ray Train (validation loss falls, the export loads) is checked by the pipeline's
end-to-end test (tests/rlhf/pipeline), and the full-weight RM runs there too: one Ray Train run
fewer each, about 20 s apiece."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from rlhf.config.tree import load_config
from rlhf.supervised.examples import answer_example, pad_batch
from rlhf.supervised.objectives import IGNORE, bradley_terry_loss, dpo_loss, sequence_logprob, sft_loss


def test_sft_loss_counts_answer_tokens_only():
    logits = torch.zeros(1, 4, 3)  # uniform over 3 tokens -> each token costs log 3
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2]])
    loss, tokens = sft_loss(logits, labels)
    assert tokens == 2
    assert float(loss) == pytest.approx(math.log(3))
    assert float(sequence_logprob(logits, labels)[0]) == pytest.approx(-2 * math.log(3))


def test_bradley_terry_by_hand():
    loss, acc = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(loss) == pytest.approx(expected)
    assert float(acc) == 0.5


def test_dpo_by_hand():
    loss, stats = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    margin = 0.5 * ((-1 + 2) - (-3 + 2))  # = 1.0
    assert stats["dpo/margin"] == pytest.approx(margin)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-margin))))


def test_answer_example_masks_the_prompt(tiny_model_dir):
    from rlhf.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    ex = answer_example(tok, "What is 2 plus 2?", "4", max_length=64)
    answer = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
    assert tok.decode(answer) == "4" + tok.eos_token
    batch = pad_batch([ex, answer_example(tok, "Hi?", "Hello there", 64)], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


# ----------------------------------------------------------------------------- tiny runs


@pytest.fixture(scope="module", autouse=True)
def local_ray(request):
    """One local Ray for this module's Ray Train runs (run_finetune starts and stops its own
    only when none is running), instead of a start and a shutdown per test."""
    if not any(item.get_closest_marker("slow") for item in request.session.items if item.module is request.module):
        yield
        return
    import ray

    ours = not ray.is_initialized()
    if ours:
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    if ours:
        ray.shutdown()


def _cfg(tmp_path: Path, tiny_model_dir: str, *extra: str):
    base = ["model.path=" + tiny_model_dir, "model.max_prompt_tokens=64", "data.train=gym:basic_arithmetic",
            "data.gym_size=160", "train.name=t"]
    for stage in ("sft", "rm", "dpo"):
        base += [f"{stage}.batch_size=8", f"{stage}.micro_batch_size=4", f"{stage}.max_length=80",
                 f"{stage}.num_workers=2", f"{stage}.val_fraction=0.2"]
    return load_config(None, base + list(extra))


def _synthetic_pairs(path: Path, n: int = 160) -> Path:
    """A learnable preference: the correct number beats a wordy non-answer."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"What is {a} plus {b}? (#{i})", "chosen": f"The answer is {a + b}.",
                     "rejected": rng.choice(["Because it is a river.", "Please explain the city.", "No, true false."])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dpo_job(tmp_path: Path, tiny_model_dir: str, out: Path, *extra: str):
    from rlhf.supervised.inputs import pair_job

    cfg = _cfg(tmp_path, tiny_model_dir, "dpo.lr=0.001", "dpo.epochs=1", "dpo.beta=0.1", "dpo.save_every=2", *extra)
    pairs = tmp_path / "pairs.jsonl"
    if not pairs.exists():
        _synthetic_pairs(pairs)
    return cfg, pair_job("dpo", cfg, tiny_model_dir, [str(pairs)], out)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, list[dict]]:
    """An uninterrupted DPO run (16 steps, a checkpoint every 2): its folder and validation rows."""
    from rlhf.supervised.trainer import run_finetune

    tmp = tmp_path_factory.mktemp("dpo")
    cfg, job = _dpo_job(tmp, tiny_model_dir, tmp / "dpo")
    return tmp, run_finetune(job, cfg)


@pytest.mark.slow
def test_dpo_raises_the_chosen_over_rejected_margin(dpo_run):
    _, rows = dpo_run
    assert rows[0]["val/margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
    assert rows[-1]["val/margin"] > 0.5
    assert rows[-1]["val/accuracy"] > 0.8


def _kill_a_worker_after(out: Path, step: int, role_pids, timeout: float = 300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            done = json.loads((out / "progress.json").read_text())["step"]
        except (OSError, ValueError):
            done = 0
        pids = role_pids("RayTrainWorker")
        if done >= step and pids:
            os.kill(max(pids), signal.SIGKILL)
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_dpo_run_killed_mid_way_resumes_from_its_checkpoint_step_by_step(dpo_run, tiny_model_dir, role_pids):
    """kill -9 of a Ray Train worker after step 5 with no retries left fails the run; `--resume`
    continues from the last checkpoint (step 4, or 2 if 4 was not yet recorded) and every
    validation row, the weights' effect included, equals the uninterrupted run's."""
    from rlhf.supervised.trainer import last_checkpoint, run_finetune, train_run_dir

    tmp, expected = dpo_run
    out = tmp / "killed"
    cfg, job = _dpo_job(tmp, tiny_model_dir, out, "train.max_failures=0")
    killed = []
    killer = threading.Thread(target=lambda: killed.append(_kill_a_worker_after(out, 5, role_pids)))
    killer.start()
    with pytest.raises(Exception):  # noqa: B017 - Ray Train's error type for a dead worker group
        run_finetune(job, cfg)
    killer.join()
    assert killed == [True]
    latest = last_checkpoint(train_run_dir(job))
    assert latest in ("checkpoint_step_000002", "checkpoint_step_000004")
    lines: list[str] = []
    rows = run_finetune(job, cfg, log=lines.append, resume=True)
    assert f"[dpo] resuming from {latest}" in lines

    def same(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "seconds"}

    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for got, want in zip(rows, expected):
        assert same(got) == pytest.approx(same(want), rel=1e-5, abs=1e-6), got["step"]
    assert (out / "model.safetensors").exists()


def test_identical_chosen_and_rejected_rows_are_quarantined(tmp_path):
    from rlhf.data.kinds import load

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    result = load(path, "preferences")
    assert result.table.num_rows == 1
    assert "identical" in result.quarantined[0]["reason"]


@pytest.mark.slow
def test_lora_reward_model_trains_and_exports_a_plain_folder(tmp_path, tiny_model_dir):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from rlhf.supervised.inputs import pair_job
    from rlhf.supervised.trainer import run_finetune

    cfg = load_config(None, ["model.path=" + tiny_model_dir, "train.name=t", "rm.batch_size=8",
                             "rm.micro_batch_size=4", "rm.max_length=80", "rm.num_workers=2", "rm.val_fraction=0.2",
                             "rm.lr=0.01", "rm.epochs=2", "rm.lora=true", "model.lora.r=8", "model.lora.alpha=16"])
    assert not cfg.model.lora.enabled
    job = pair_job("rm", cfg, tiny_model_dir, [str(_synthetic_pairs(tmp_path / "pairs.jsonl"))], tmp_path / "rm")
    rows = run_finetune(job, cfg)
    assert rows[-1]["val/accuracy"] >= 0.8, rows  # beats chance on held-out pairs
    from rlhf.models.scorer import RewardModelScorer

    scorer = RewardModelScorer(str(tmp_path / "rm"))
    good, bad = scorer(["What is 3 plus 4?"] * 2, ["The answer is 7.", "Because it is a river."])
    assert good > bad
    with safe_open(str(tmp_path / "rm" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        exported = {k: f.get_tensor(k) for k in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                                  "model.layers.0.self_attn.q_proj.weight")}
    with safe_open(str(Path(tiny_model_dir) / "model.safetensors"), "pt") as f:
        base = {k: f.get_tensor(k) for k in exported}
    # Adapters only: weights outside target_modules are the base model's, q_proj has its adapter folded in.
    assert torch.equal(exported["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(exported["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(exported["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert "score.weight" in keys
    assert not any("lora_" in k or "modules_to_save" in k or "original_module" in k or "base_model" in k
                   for k in keys)
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
