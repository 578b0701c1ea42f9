"""Device choice per role, from the config alone (no GPU is needed to test it)."""

from __future__ import annotations

import pytest

from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.models.runtime import (
    gpu_refusal,
    learner_accelerator,
    preflight,
    reference_device,
    reward_device,
    supervised_accelerator,
)

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _cfg(*overrides: str):
    return load_config(None, ["model.path=tiny", *overrides])


@pytest.mark.parametrize(("use_gpu", "share", "expected"), [
    ("false", "0", "cpu"), ("false", "0.5", "cpu"),  # on CPUs no bundle holds a GPU
    ("true", "0", "cpu"), ("true", "0.25", "cuda"), ("true", "1", "cuda"),
])
def test_reference_device(use_gpu, share, expected):
    cfg = _cfg(f"resources.use_gpu={use_gpu}", f"resources.gpus_per_reference={share}")
    assert reference_device(cfg) == expected


@pytest.mark.parametrize(("use_gpu", "share", "expected"), [
    ("false", "0", "cpu"), ("false", "0.5", "cpu"),
    ("true", "0", "cpu"), ("true", "0.25", "cuda"), ("true", "1", "cuda"),
])
def test_reward_device(use_gpu, share, expected):
    cfg = _cfg(f"resources.use_gpu={use_gpu}", f"resources.gpus_per_reward={share}")
    assert reward_device(cfg) == expected


def test_reward_and_reference_shares_are_read_separately():
    cfg = _cfg("resources.use_gpu=true", "resources.gpus_per_reward=0.5", "resources.gpus_per_reference=0")
    assert (reward_device(cfg), reference_device(cfg)) == ("cuda", "cpu")


@pytest.mark.parametrize(("use_gpu", "expected"), [("false", ("cpu", "gloo")), ("true", ("cuda", "nccl"))])
def test_supervised_accelerator(use_gpu, expected):
    # Ray Train gives each SFT/RM/DPO worker one whole GPU when use_gpu is set.
    assert supervised_accelerator(_cfg(f"resources.use_gpu={use_gpu}")) == expected


@pytest.mark.parametrize(("use_gpu", "backend", "expected"), [
    ("false", "auto", ("cpu", "gloo")), ("true", "auto", ("cuda", "nccl")), ("true", "gloo", ("cuda", "gloo")),
])
def test_learner_accelerator_follows_use_gpu_and_the_backend_override(use_gpu, backend, expected):
    assert learner_accelerator(_cfg(f"resources.use_gpu={use_gpu}", f"learner.backend={backend}")) == expected


def test_a_local_gpu_run_without_a_gpu_is_refused_before_ray():
    gpu = _cfg("resources.use_gpu=true")
    assert gpu_refusal(_cfg(), cuda_available=False, cluster_address="") is None
    assert gpu_refusal(gpu, cuda_available=True, cluster_address="") is None
    assert gpu_refusal(gpu, cuda_available=False, cluster_address="ray://head:10001") is None  # the cluster decides
    message = gpu_refusal(gpu, cuda_available=False, cluster_address="")
    assert "resources.use_gpu" in message and "no CUDA GPU" in message and "rlhf submit" in message


def test_preflight_names_a_missing_model(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert preflight(load_config(None, [f"model.path={tiny_model_dir}"])) == (tiny_model_dir, tiny_model_dir)
    with pytest.raises(ConfigError, match="/nonexistent/reward"):
        preflight(load_config(None, [f"model.path={tiny_model_dir}", "reward.model_path=/nonexistent/reward"]))
