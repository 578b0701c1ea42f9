"""OfflineEngine: one engine for the module, checked by facts that hold for any model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf.config.tree import load_config
from rlhf.data.prompts import encode_questions
from rlhf.models.offline import OfflineEngine, vllm_engine_kwargs

# vLLM in this process or a subprocess, and no Ray: runs beside the `alone` tests in make test.
pytestmark = pytest.mark.no_ray

QUESTIONS = ["What is 2 + 2?", "Name a primary colour.", "Who wrote Hamlet?"]
NEW_TOKENS = 12


def test_import_does_not_load_engines():
    code = ("import sys, rlhf.models.offline; "
            "print(sorted(m for m in ('vllm', 'ray', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_overrides_replace_shared_settings(tiny_model_dir):
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "train.seed=3"])
    engine = OfflineEngine(tiny_model_dir, cfg, 20, seed=9)
    assert engine.engine_kwargs == {**vllm_engine_kwargs(cfg, 20), "seed": 9}
    assert engine.llm is None  # nothing starts before start() / `with`
    with pytest.raises(RuntimeError, match="not started"):
        engine.teacher_forced_logprobs([[1, 2]], [[3]])


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.max_prompt_tokens=48",
                             f"rollout.max_new_tokens={NEW_TOKENS}"])
    with OfflineEngine(tiny_model_dir, cfg) as started:
        yield started, cfg
    assert started.llm is None  # closed on exit


@pytest.fixture(scope="module")
def prompts(engine, tiny_model_dir):
    from rlhf.models.loading import load_tokenizer

    _, cfg = engine
    return encode_questions(load_tokenizer(tiny_model_dir), QUESTIONS, cfg)


GREEDY = {"temperature": 0.0, "max_tokens": NEW_TOKENS, "logprobs": 0}


@pytest.mark.slow
def test_greedy_sampling_is_repeatable(engine, prompts):
    eng, cfg = engine
    first, second = eng.sample(prompts, GREEDY), eng.sample(prompts, GREEDY)
    assert len(first) == len(QUESTIONS) and all(len(s) == 1 for s in first)
    assert [s[0].token_ids for s in first] == [s[0].token_ids for s in second]
    for (s,) in first:
        assert 0 < len(s.token_ids) <= NEW_TOKENS
        assert len(s.logprobs) == len(s.token_ids) and all(lp <= 0 for lp in s.logprobs)
        assert s.finish_reason in ("stop", "length")
    assert all(len(p) <= cfg.model.max_prompt_tokens for p in prompts)


@pytest.mark.slow
def test_n_samples_without_logprobs(engine, prompts):
    eng, _ = engine
    out = eng.sample(prompts[:2], {"n": 3, "temperature": 1.0, "max_tokens": 4})
    assert [len(s) for s in out] == [3, 3]
    assert all(s.logprobs is None and 0 < len(s.token_ids) <= 4 for group in out for s in group)
    assert eng.sample([], GREEDY) == []


@pytest.mark.slow
def test_teacher_forced_logprobs_match_sampling_logprobs(engine, prompts):
    eng, _ = engine
    answers = [s[0] for s in eng.sample(prompts, GREEDY)]
    scored = eng.teacher_forced_logprobs(prompts, [a.token_ids for a in answers])
    assert [len(lp) for lp in scored] == [len(a.token_ids) for a in answers]
    for got, want in zip(scored, [a.logprobs for a in answers]):
        assert got == pytest.approx(want, abs=1e-4)
    # A prefix of an answer scores as the same prefix of its logprobs (causal model).
    half = [a.token_ids[: len(a.token_ids) // 2] for a in answers]
    for got, a in zip(eng.teacher_forced_logprobs(prompts, half), answers):
        assert got == pytest.approx(a.logprobs[: len(got)], abs=1e-4)
    assert eng.teacher_forced_logprobs([], []) == []


def test_lora_engines_adapt_only_the_target_modules_at_a_rank_vllm_accepts():
    from rlhf.models.offline import lora_engine_kwargs

    kwargs = lora_engine_kwargs(4, ["q_proj", "v_proj"])
    # vLLM takes a fixed set of max ranks; the LM head stays unwrapped (prompt logprobs need it).
    assert kwargs == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1,
                      "lora_target_modules": ["q_proj", "v_proj"]}
    assert lora_engine_kwargs(32, ["q_proj"])["max_lora_rank"] == 32
    with pytest.raises(ValueError, match="above vLLM's largest"):
        lora_engine_kwargs(1024, ["q_proj"])
