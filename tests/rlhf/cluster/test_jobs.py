"""Ray Jobs: `rlhf submit` and `rlhf jobs` against a real local Ray head, the job spec they
build, and cluster.yaml against Ray's own cluster-launcher schema.

The head is started with `ray start --head --block` in its own temp dir and ports, and stopped
by signalling that process (which stops only the processes it started), never with `ray stop`,
which would stop every Ray on the machine.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf.cli.main import app
from rlhf.cluster import jobs
from rlhf.config.tree import load_config

# A cluster of two nodes started with `ray start`: no other Ray on the machine meanwhile.
pytestmark = pytest.mark.alone

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "examples" / "tiny-grpo.yaml"
HEAD_CPUS = 8


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return e


def rlhf(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.cli.main", *map(str, args)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def flat(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- cluster.yaml


def _cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster_config()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    # What `ray up` does before it talks to the cloud: fill in defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(raw)))
    types = raw["available_node_types"]
    head, workers = types[raw["head_node_type"]], [t for n, t in types.items() if n != raw["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert any(t["resources"].get("GPU", 0) > 0 and t["min_workers"] <= t["max_workers"] for t in workers)
    assert any('".[gpu]"' in cmd for cmd in raw["setup_commands"])


def test_cluster_yaml_schema_check_is_not_vacuous():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = _cluster_config()
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# ----------------------------------------------------------------------------- the job spec


def test_job_runs_rlhf_train_from_the_uploaded_project(tmp_path):
    cfg = load_config(TINY, ["train.steps=2"])
    spec = jobs.build_spec(cfg, TINY, ["train.steps=2", "model.system_prompt=be brief"])
    assert spec.entrypoint.startswith(f"PY={shlex.quote(sys.executable)};")
    assert spec.runtime_env["working_dir"] == str(ROOT)
    assert {"/.venv", "/.cache", "/runs", ".git"} <= set(spec.runtime_env["excludes"])
    assert spec.submission_id.startswith("rlhf-tiny-grpo-")
    assert spec.entrypoint_num_cpus == 1
    assert spec.metadata["run_dir"] == f"~/rlhf-runs/{spec.submission_id}"

    # Run the entrypoint the way the job manager does (a shell), with a stand-in `python` that
    # prints its arguments: the submitting interpreter is missing here, so it falls back.
    spec = jobs.build_spec(cfg, TINY, ["model.system_prompt=be brief"], python="/nonexistent/python")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "python").chmod(0o755)
    out = subprocess.run(["sh", "-c", spec.entrypoint], capture_output=True, text=True, check=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}).stdout.splitlines()
    assert out == ["-m", "rlhf.cli.main", "train", "examples/tiny-grpo.yaml", "model.system_prompt=be brief",
                   "--run-dir", f"{tmp_path}/rlhf-runs/{spec.submission_id}"]


def test_run_dir_absolute_or_under_the_nodes_home(tmp_path):
    cfg = load_config(TINY)
    spec = jobs.build_spec(cfg, TINY, [], run_dir=str(tmp_path / "r un"))
    assert spec.entrypoint.endswith("--run-dir " + shlex.quote(str(tmp_path / "r un")))
    spec = jobs.build_spec(cfg, TINY, [], run_dir="runs/x")
    assert spec.entrypoint.endswith('--run-dir "$HOME"/runs/x') and spec.run_dir == "~/runs/x"


def test_job_env_forwards_the_run_variables():
    environ = {"RLHF_CACHE": "/c", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_LOGGING_LEVEL": "INFO", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x"}
    cpu = jobs.forwarded_env(load_config(TINY), environ)
    assert {k: cpu[k] for k in ("RLHF_CACHE", "HF_HUB_OFFLINE", "DS_ACCELERATOR", "VLLM_CPU_KVCACHE_SPACE")} == {
        "RLHF_CACHE": "/c", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert "HOME" not in cpu and "AWS_SECRET_ACCESS_KEY" not in cpu
    # `rlhf train` passes the same variables on through ray.init; inside a job Ray merges them only so.
    assert cpu["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    gpu = jobs.forwarded_env(load_config(TINY, ["resources.use_gpu=true"]), environ)
    assert "DS_ACCELERATOR" not in gpu and "VLLM_CPU_KVCACHE_SPACE" not in gpu
    assert gpu["VLLM_LOGGING_LEVEL"] == "INFO" and gpu["RLHF_CACHE"] == "/c"


def test_config_outside_the_project_is_refused(tmp_path):
    outside = tmp_path / "run.yaml"
    outside.write_text(TINY.read_text())
    with pytest.raises(jobs.JobError, match="outside the project directory"):
        jobs.build_spec(load_config(outside), outside, [])


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert jobs.resolve_address(None) == "http://127.0.0.1:8265"
    assert jobs.resolve_address("10.0.0.5:8265/") == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address is not a dashboard
    assert jobs.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.resolve_address(None) == "http://head:8265"
    with pytest.raises(jobs.JobError, match="Ray Client address"):
        jobs.resolve_address("ray://head:10001")


def test_auth_token_is_sent_without_setting_ray_auth_mode(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("abc\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer abc"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")
    assert jobs.auth_headers() == {"Authorization": "Bearer xyz"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


# ----------------------------------------------------------------------------- unreachable


def test_unreachable_address_fails_fast(free_port):
    runner = CliRunner()
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["submit", str(TINY), "--address", address], ["jobs", "status", "x", "--address", address]):
        started = time.monotonic()
        result = runner.invoke(app, args)
        assert time.monotonic() - started < 10
        assert result.exit_code == 2, result.output
        assert "cannot reach the Ray dashboard" in flat(result.output) and "--address" in flat(result.output)


def test_silent_address_times_out_instead_of_hanging():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts connections, never answers
        started = time.monotonic()
        with pytest.raises(jobs.JobError, match="no answer"):
            jobs.check_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", {}, timeout=1.0)
        assert time.monotonic() - started < 5


# ----------------------------------------------------------------------------- a real local head


@pytest.fixture(scope="module")
def nodes(two_ray_nodes):
    """Two Ray nodes on this machine (tests/conftest.py), HEAD_CPUS in all."""
    with two_ray_nodes(HEAD_CPUS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ray_head(nodes) -> str:
    return nodes.dashboard


def job_ids(address: str) -> set[str]:
    return {j.submission_id for j in jobs.client(address).list_jobs()}


def status_field(text: str, label: str) -> str:
    match = re.search(rf"{label}: (\S+)", text)
    assert match, text
    return match.group(1)


@pytest.mark.slow
def test_submit_follows_a_tiny_run_to_success_across_two_nodes(nodes, ray_head, tmp_path):
    """The engine on the head, the learner ranks on the other node: weights travel through the
    object store, the ranks meet on the node's address, and the engine agrees with the learner."""
    run_dir = tmp_path / "run"
    proc = rlhf("submit", TINY, "train.steps=2", "train.save_every=0", "resources.role_resources.rollout.gen_node=1",
                "resources.role_resources.learner.train_node=1", "--address", ray_head, "--follow",
                "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("rlhf-tiny-grpo-")
    assert "SUCCEEDED" in proc.stderr

    logs = rlhf("jobs", "logs", job_id, "--address", ray_head, timeout=120)
    assert logs.returncode == 0 and str(run_dir) in logs.stdout and "reward/mean" in logs.stdout
    status = rlhf("jobs", "status", job_id, "--address", ray_head, timeout=120)
    assert status.returncode == 0 and f"job {job_id}: SUCCEEDED" in status.stdout

    found = Path(status_field(status.stdout, r"run directory \(on the node that ran it\)"))
    assert found == run_dir
    rows = [json.loads(line) for line in (found / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("reward/mean" in r for r in rows)
    assert (found / "model" / "config.json").is_file() and (found / "model" / "model.safetensors").is_file()

    placed = json.loads((found / "placement.json").read_text())
    engine_nodes = {a["node_id"] for a in placed["roles"]["rollout"]}
    learner_nodes = {a["node_id"] for a in placed["roles"]["learner"]}
    assert placed["nodes"] == 2 and len(engine_nodes) == len(learner_nodes) == 1 and engine_nodes != learner_nodes
    assert placed["weight_sync"] == "object_store"
    assert placed["learner_address"] == nodes.ip  # not loopback, where the host has an address
    assert all(r["perf/sync_bytes"] > 0 and 0 <= r["rollout/logprob_diff"] < 1e-3 for r in rows), rows


@pytest.mark.slow
def test_failing_job_comes_back_failed_with_its_error(ray_head, tmp_path):
    # Valid here, fails on the cluster: the model folder does not exist where the job runs.
    proc = rlhf("submit", TINY, "model.path=/nonexistent/model", "--address", ray_head, "--follow",
                "--run-dir", tmp_path / "fail")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0]
    err = flat(proc.stderr)
    assert f"job {job_id}: FAILED" in err
    assert "error: model: model '/nonexistent/model'" in err and "exit code 2" in err
    assert "log lines:" in err

    status = rlhf("jobs", "status", job_id, "--address", ray_head, timeout=120)
    assert "FAILED" in status.stdout and "/nonexistent/model" in status.stdout


@pytest.mark.slow
def test_bad_configs_and_oversized_runs_are_refused_before_submission(ray_head):
    before = job_ids(ray_head)
    proc = rlhf("submit", TINY, "algo.name=nope", "--address", ray_head, timeout=120)
    assert proc.returncode == 2 and "algo.name" in proc.stderr and "nope" in proc.stderr
    proc = rlhf("submit", TINY, "learner.num_ranks=8", "--address", ray_head, timeout=120)
    assert proc.returncode == 2, proc.stderr
    roles = "rollout 1, learner 8, reference 1, driver 1"  # rule rewards take no CPU of their own
    assert f"needs 11 CPU ({roles}) but the Ray cluster has {HEAD_CPUS}" in flat(proc.stderr)
    proc = rlhf("submit", TINY, "resources.use_gpu=true", "--address", ray_head, timeout=120)
    assert proc.returncode == 2 and "needs 3 GPU (rollout 1, learner 2)" in flat(proc.stderr)
    assert job_ids(ray_head) == before


@pytest.mark.slow
def test_stop_a_running_job(ray_head, tmp_path):
    proc = rlhf("submit", TINY, "train.steps=200", "train.name=stopme", "--address", ray_head,
                "--run-dir", tmp_path / "stop", timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    deadline = time.monotonic() + 180
    while jobs.status(job_id, ray_head).status == "PENDING" and time.monotonic() < deadline:
        time.sleep(2)
    stopped = rlhf("jobs", "stop", job_id, "--address", ray_head, timeout=120)
    assert stopped.returncode == 0 and f"stop requested; job {job_id}: STOPPED" in stopped.stdout
    assert jobs.status(job_id, ray_head).status == "STOPPED"
    again = rlhf("jobs", "stop", job_id, "--address", ray_head, timeout=120)
    assert "already finished" in again.stdout


@pytest.mark.slow
def test_unknown_job_id_is_named(ray_head):
    proc = rlhf("jobs", "status", "rlhf-nope-123", "--address", ray_head, timeout=120)
    assert proc.returncode == 2 and "no job 'rlhf-nope-123'" in flat(proc.stderr)
