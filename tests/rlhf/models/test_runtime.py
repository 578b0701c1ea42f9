"""Device choice per role, from the config alone (no GPU is needed to test it)."""

from __future__ import annotations

import pytest

from rlhf.config.tree import load_config
from rlhf.models.runtime import reference_device, reward_device, supervised_accelerator


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
