"""End-to-end RL on tiny models: real Ray actors, a real vLLM engine, real DeepSpeed ZeRO-3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def rlhf(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# kill -9 of each role's process during the module's GRPO run, once this many steps are logged:
# Ray restarts reward, reference and the engine in place (the engine gets the last weights back);
# a dead learner rank restarts the learner group from the last checkpoint (save_every 3), so steps
# after it are run again.
KILLS = (("RewardActor", 2), ("RolloutActor", 4), ("LearnerRank", 7), ("ReferenceActor", 9))


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_during(proc: subprocess.Popen, run_dir: Path, role_pids, kills=KILLS, timeout: float = 600) -> list[str]:
    """kill -9 the newest process of each role once `after` steps are logged; the roles killed."""
    killed, deadline = [], time.time() + timeout
    for role, after in kills:
        while proc.poll() is None and time.time() < deadline:
            pids = role_pids(role, under=proc.pid)
            if logged_steps(run_dir) >= after and pids:
                os.kill(max(pids), signal.SIGKILL)
                killed.append(role)
                break
            time.sleep(0.1)
    return killed


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, role_pids) -> Path:
    run_dir = tmp_path_factory.mktemp("grpo") / "run"
    cmd = [sys.executable, "-m", "rlhf.cli.main", "train", "examples/tiny-grpo.yaml", "--run-dir", str(run_dir),
           "--registry", str(run_dir.parent / "registry"), "train.save_every=3", "train.max_failures=4"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "COLUMNS": "200"}) as proc:
        killed = kill_during(proc, run_dir, role_pids)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert killed == [role for role, _ in KILLS], (killed, err[-3000:])
    return run_dir


def test_a_kill_9_of_each_role_costs_a_retry_not_the_run(grpo_run: Path):
    events = [json.loads(line) for line in (grpo_run / "failures.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "failed"]
    recovered = [e for e in events if e["event"] == "recovered"]
    assert [e["role"] for e in failed] == ["reward", "rollout", "learner", "reference"]
    assert [e["action"].split(",")[0] for e in failed] == ["ray restart", "ray restart", "learner group restarted",
                                                               "ray restart"]
    assert all("died" in e["error"] for e in failed), failed
    assert "weights loaded again" in failed[1]["action"], failed[1]  # the engine came back on the policy
    assert len({e["node"] for e in failed}) == 1 and failed[0]["node"], failed  # one node, named
    # Each failure has its recovery; a learner restart resumes at a checkpoint (every 3 steps) at or
    # before the step the failure came after, and the run then goes on to the end.
    assert [e["failure"] for e in recovered] == [1, 2, 3, 4]
    assert [e["role"] for e in recovered] == ["reward", "rollout", "learner", "reference"]  # nothing else restarted
    for fail, back in zip(failed, recovered):
        assert back["seconds"] >= 0 and back["step"] <= fail["step"]
        if "last checkpoint" in fail["action"]:
            assert back["step"] % 3 == 0 and back["step"] >= fail["step"] - 3


def test_grpo_reward_rises_and_run_dir_is_complete(grpo_run: Path):
    rows = metrics(grpo_run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = mean(r["reward/mean"] for r in rows[:3]), mean(r["reward/mean"] for r in rows[-3:])
    assert last > first + 0.05, (first, last)
    for key in ("reward/mean", "objective/kl", "objective/entropy", "loss/policy", "timing/generate",
                "timing/update", "timing/sync", "rollout/logprob_diff"):
        assert key in rows[-1], key
    assert (grpo_run / "config.yaml").is_file()
    assert (grpo_run / "metrics.png").stat().st_size > 1000
    assert any((grpo_run / "tensorboard").iterdir())
    assert (grpo_run / "checkpoints" / "trainer_state.json").is_file()
    assert (grpo_run / "model" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(grpo_run / "model")
    # The exported policy became a candidate version with its lineage.
    from rlhf.lifecycle.registry import Registry

    (version,) = Registry(grpo_run.parent / "registry").versions()
    assert (version["source"], version["status"], version["exported_from"]) == ("train", "candidate",
                                                                               str(grpo_run / "model"))
    assert version["config"]["train"]["steps"] == 12 and version["evaluation"]["last_step"]["step"] == 12
    assert version["data"]["inputs"] and (Path(version["path"]) / "model.safetensors").is_file()


def test_engine_and_learner_logprobs_agree_after_every_sync(grpo_run: Path):
    diffs = [r["rollout/logprob_diff"] for r in metrics(grpo_run)]
    assert max(diffs) < 1e-3, diffs
    # The learner recomputes the behaviour logprobs vLLM reported while sampling.
    assert max(r["rollout/behaviour_logprob_diff"] for r in metrics(grpo_run)) < 1e-3


def test_resume_continues_from_the_checkpoint(grpo_run: Path):
    proc = rlhf("train", "examples/tiny-grpo.yaml", "--run-dir", str(grpo_run), "--resume", "train.steps=14")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(grpo_run)
    assert [r["step"] for r in rows] == list(range(1, 15))
    state = json.loads((grpo_run / "checkpoints" / "trainer_state.json").read_text())
    assert state["step"] == 14


def test_rerun_without_resume_refuses_to_overwrite(grpo_run: Path):
    proc = rlhf("train", "examples/tiny-grpo.yaml", "--run-dir", str(grpo_run))
    assert proc.returncode == 2
    assert "--resume" in proc.stderr


# ----------------------------------------------------------------------------- live roles


@pytest.fixture(scope="module")
def live_roles(tmp_path_factory):
    """Real PPO actors (with a critic) for checks that look inside them; one Ray session for all.
    `rlhf train` itself runs above, on GRPO; PPO trains here, in this process, on these roles."""
    from actors.launch import shutdown, start_roles
    from rlhf.config.tree import load_config
    from rlhf.models.loading import load_tokenizer, resolve_model_path

    cfg = load_config(ROOT / "examples" / "tiny-ppo.yaml", ["train.save_every=0"])
    path = resolve_model_path(cfg.model.path)
    roles = start_roles(cfg, path, path, "pytest")
    yield cfg, roles, load_tokenizer(path), tmp_path_factory.mktemp("live")
    shutdown("pytest")


def test_ppo_with_critic_reward_rises(live_roles):
    from rlhf.rl.trainer import Trainer
    from rlhf.tracking import MetricsLog

    cfg, roles, tokenizer, root = live_roles
    run_dir = root / "ppo"
    (run_dir / "checkpoints").mkdir(parents=True)
    log = MetricsLog(run_dir)
    rows = Trainer(cfg, roles, run_dir, tokenizer).run(log)
    log.close()
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, cfg.train.steps + 1))
    first, last = mean(r["reward/mean"] for r in rows[:3]), mean(r["reward/mean"] for r in rows[-3:])
    assert last > first + 0.05, (first, last)
    assert "loss/value" in rows[-1]


def test_learner_parameters_are_partitioned(live_roles):
    _, roles, _, _ = live_roles
    info = roles.learner.partition_info()
    assert len(info) == 2
    full = info[0]["full"]
    for rank in info:
        assert rank["full"] == full
        assert rank["local"] < 0.6 * full  # each rank holds about half
    assert sum(r["local"] for r in info) >= full


def test_resume_restores_step_optimizer_moments_and_data_position(live_roles):
    from rlhf.rl.trainer import Trainer

    cfg, roles, tokenizer, root = live_roles
    run_dir = root / "resume"
    (run_dir / "checkpoints").mkdir(parents=True)
    trainer = Trainer(cfg, roles, run_dir, tokenizer)
    for _ in range(2):
        trainer.rl_step()
    trainer.save()
    saved_moments = roles.learner.optimizer_fingerprints()
    saved_position = trainer.sampler.state_dict()
    trainer.rl_step()  # moves everything past the checkpoint
    assert trainer.sampler.state_dict() != saved_position

    resumed = Trainer(cfg, roles, run_dir, tokenizer)
    assert resumed.resume() == 2
    moments = roles.learner.optimizer_fingerprints()
    assert moments == pytest.approx(saved_moments, rel=0, abs=0)
    assert resumed.sampler.state_dict() == saved_position
    assert resumed.step == 2
