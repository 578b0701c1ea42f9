"""Sizing estimates against hand-computed numbers, and the doc's tables against the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.cluster import sizing
from rlhf.cluster.sizing import GIB, ModelShape

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

ROOT = Path(__file__).resolve().parents[3]
TOY = ModelShape("toy", params=1e9, layers=10, hidden=1000, kv_heads=2, head_dim=100, vocab=10000)


def test_weights_and_zero3_states():
    assert sizing.weights_gib(1e9) == pytest.approx(2e9 / GIB)
    assert sizing.weights_gib(1e9, bytes_per_param=4) == pytest.approx(4e9 / GIB)
    # 16 bytes/param (bf16 weights + grads, fp32 master + two Adam moments) over N ranks.
    assert sizing.zero3_states_gib(7e9, 1) == pytest.approx(112e9 / GIB)
    assert sizing.zero3_states_gib(7e9, 8) == pytest.approx(14e9 / GIB)


def test_kv_cache_formula():
    # 2 (K, V) * layers * kv_heads * head_dim * bytes * tokens
    assert sizing.kv_cache_gib(TOY, 1000) == pytest.approx(2 * 10 * 2 * 100 * 2 * 1000 / GIB)
    smol = sizing.MODELS[0]
    assert sizing.kv_cache_gib(smol, 1024) * 1024 == pytest.approx(22.5, abs=0.01)  # MiB per 1k tokens


def test_activations_formula():
    tokens = 100
    kept, one_layer, logits = tokens * 1000 * 10 * 2, tokens * 1000 * 34, tokens * 10000 * 4
    assert sizing.activations_gib(TOY, tokens) == pytest.approx((kept + one_layer + logits) / GIB)


def test_learner_ranks_is_the_smallest_power_of_two_that_fits():
    ranks = sizing.learner_ranks(TOY, gpu_gib=8, tokens_per_rank=1000)
    room = 8 * sizing.USABLE - sizing.activations_gib(TOY, 1000)
    assert sizing.zero3_states_gib(TOY.params, ranks) <= room < sizing.zero3_states_gib(TOY.params, ranks // 2)
    assert ranks == 4
    assert sizing.learner_ranks(TOY, gpu_gib=0.05, tokens_per_rank=1000) is None  # activations alone overflow


def test_bigger_models_never_need_fewer_gpus():
    for gib in sizing.TABLES.values():
        ranks = [sizing.learner_ranks(m, gib, 4096) or 10**9 for m in sizing.MODELS]
        tps = [sizing.rollout_tp(m, gib, 65536) or 10**9 for m in sizing.MODELS]
        assert ranks == sorted(ranks) and tps == sorted(tps)


def test_rollout_tp_splits_weights_and_kv_heads():
    seventy = sizing.MODELS[-1]
    assert sizing.rollout_tp(seventy, 80, 65536) == 4
    tp = 4
    per_gpu = sizing.weights_gib(seventy.params) / tp + sizing.kv_cache_gib(seventy, 65536) / tp
    assert per_gpu <= 80 * sizing.USABLE
    assert sizing.rollout_tp(sizing.MODELS[0], 24, 65536) == 1


def test_forward_only_share_rounds_up_to_a_tenth():
    assert sizing.forward_only_gpus(sizing.MODELS[0], 80) == 0.1
    assert sizing.forward_only_gpus(sizing.MODELS[-1], 80) > 1


def test_doc_tables_match_the_code():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert sizing.render() in doc, "docs/scaling.md is stale: paste `python -m rlhf.cluster.sizing` into it"
