"""Held-out evaluation: greedy answers from vLLM, accuracy and quality proxies, and, against a
baseline, win rate, KL and paired bootstrap confidence intervals.

    evaluate(model, data, out_dir, cfg, baseline=None) -> report dict (also report.json)

Generation (vLLM, which also gives the logprobs), the reward-model pass and scoring are separate steps;
`score_answers` is a pure function of rows and answer texts, so its numbers can be checked by hand.

Definitions, where there is a choice:
  - accuracy: choice correctness on closed-ended rows (with `choices`), exact match on the others.
    exact_match and token_f1 are averaged over the open-ended rows only, choice_accuracy over the
    closed-ended ones (null when a file has none of that kind).
  - A closed-ended question is shown with its options listed ("A. ..."), and a row's `context`
    before the question; plain rows are shown as the bare question, as in training.
  - length: generated tokens, not counting a final end-of-sequence token.
  - repetition: share of an answer's word 4-grams that repeat an earlier 4-gram of that answer.
  - refusal: the answer matches one of a few refusal phrases ("I'm sorry", "I cannot answer", ...).
  - logprob (coherence proxy): mean per-token logprob of an answer (with its end-of-sequence
    token) under the model that wrote it, as its vLLM engine reports it while generating.
  - kl_to_baseline: the k1 estimate sum_t [log p_model(y_t) - log p_baseline(y_t)] over the
    model's own greedy answers, averaged over questions. Greedy answers are not samples, so this
    is the divergence along what the model actually says; it is 0 for identical models. It needs
    both models to share a vocabulary and is null otherwise.
  - win_rate: per question 1 if the model's answer is better, 0.5 for a tie, 0 if worse; judged by
    the reward model when `eval.reward_model` is set, else by accuracy, then token F1.
  - Confidence intervals: 95% percentile bootstrap over questions (paired for differences).
"""

from __future__ import annotations

import gc
import math
import os
import re
import time
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rlhf.config import Config
from rlhf.data import DataError, load_source
from rlhf.models import load_tokenizer, resolve_model_path, vllm_engine_kwargs
from rlhf.prompts import encode_prompt, render_prompt
from rlhf.rewards import choice, exact_match, token_f1

METRICS = ("accuracy", "exact_match", "token_f1", "choice_accuracy", "rm_score", "logprob",
           "length", "repetition", "refusal")
"""Per-question metrics; each aggregate is the mean over the questions where it is defined."""
"""Sequences per HF forward pass when scoring answers on CPU."""


# ----------------------------------------------------------------------------- data


def load_eval_rows(spec: str, cfg: Config) -> tuple[list[dict], dict]:
    """Held-out rows {question, reference, choices, context} and a summary of the source.

    Accepts QA files (`answer`, optional `choices`/`context`), prompt files (`reference`) and
    `gym:<task>` (eval.size questions from eval.seed). Rows without a reference are skipped;
    a source with none at all is an error that says what is needed.
    """
    if not spec:
        raise DataError("no evaluation data: pass --data FILE or set eval.data")
    if spec.startswith("gym:"):
        result = load_source(spec, "prompts", None, cfg.eval.size, cfg.eval.seed)
    else:
        try:
            result = load_source(spec, "qa", cfg.data.fields)
        except DataError:
            # Not a QA file: a prompts file has `reference` (or no answers at all).
            result = load_source(spec, "prompts", cfg.data.fields)
    rows = []
    for r in result.table.to_pylist():
        reference = r.get("answer", r.get("reference"))
        rows.append({"question": r["question"], "reference": reference,
                     "choices": r.get("choices"), "context": r.get("context")})
    kept = [r for r in rows if r["reference"] is not None]
    if not kept:
        raise DataError(
            f"{spec}: none of its {len(rows)} questions has a reference answer; evaluation compares "
            "answers with references, so each row needs an `answer` column (QA files) or a "
            "`reference` column (prompt files), or map yours with data.fields")
    info = {"source": result.source, "kind": result.kind, "rows": result.total_rows, "evaluated": len(kept),
            "quarantined": len(result.quarantined), "skipped_no_reference": len(rows) - len(kept)}
    return kept, info


def eval_question(row: dict) -> str:
    """The text the model is asked: context, question, and the options of a closed question."""
    text = row["question"]
    if row.get("context"):
        text = f"{row['context'].strip()}\n\n{text}"
    choices = row.get("choices")
    if choices and not all(c in row["question"] for c in choices):
        options = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
        text = f"{text}\n\nOptions:\n{options}"
    return text


# ----------------------------------------------------------------------------- models


@dataclass
class Generation:
    """Greedy answers of one model to N questions."""

    prompt_ids: list[list[int]]  # [N][P_i] chat-templated prompt tokens
    answer_ids: list[list[int]]  # [N][T_i] generated tokens (with a final EOS when it stopped)
    answers: list[str]  # [N] decoded answers, special tokens removed
    n_tokens: list[int]  # [N] answer length without the final EOS
    logprobs: list[list[float]]  # [N][T_i] the model's logprob of each answer token
    scored: list[list[float]] | None = None  # [M][T_j] logprobs of another model's answers (teacher-forced)


def encode_questions(tokenizer, questions: Sequence[str], cfg: Config) -> list[list[int]]:
    m = cfg.model
    return [encode_prompt(tokenizer, render_prompt(tokenizer, q, m.system_prompt, m.chat_template),
                          m.max_prompt_tokens) for q in questions]


def generate_answers(model_path: str, questions: Sequence[str], cfg: Config,
                     also_score: Generation | None = None) -> Generation:
    """Greedy answers from an in-process vLLM engine, freed before returning (a second engine,
    the baseline's, usually follows). The engine reports each answer token's logprob as it
    samples; with `also_score`, the same engine also scores that generation's answers
    (teacher-forced prompt logprobs), for the KL between the two models."""
    tok = load_tokenizer(model_path)
    prompt_ids = encode_questions(tok, questions, cfg)
    # One process: the engine core runs here instead of in spawned workers.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_path, **vllm_engine_kwargs(cfg, cfg.eval.max_new_tokens))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=cfg.eval.max_new_tokens, logprobs=0)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        scored = _teacher_forced(llm, also_score.prompt_ids, also_score.answer_ids) if also_score else None
    finally:
        del llm
        gc.collect()
    special = set(tok.all_special_ids)
    answer_ids = [list(o.outputs[0].token_ids) for o in outputs]
    n_tokens = [len(ids) - int(bool(ids) and o.outputs[0].finish_reason == "stop" and ids[-1] in special)
                for ids, o in zip(answer_ids, outputs)]
    logprobs = [[step[t].logprob for t, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs or [])]
                for o in outputs]
    return Generation(prompt_ids, answer_ids, [o.outputs[0].text for o in outputs], n_tokens, logprobs, scored)


def _teacher_forced(llm, prompt_ids, answer_ids) -> list[list[float]]:
    """Logprob of each given answer token under the engine's model (vLLM prompt logprobs)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p) + list(a)) for p, a in zip(prompt_ids, answer_ids)],
                           params, use_tqdm=False)
    # Entry i of prompt_logprobs scores token i of the sequence (entry 0 is None).
    return [[out.prompt_logprobs[len(p) + j][t].logprob for j, t in enumerate(a)]
            for p, a, out in zip(prompt_ids, answer_ids, outputs)]


def same_vocabulary(path_a: str, path_b: str) -> bool:
    return load_tokenizer(path_a).get_vocab() == load_tokenizer(path_b).get_vocab()


# ----------------------------------------------------------------------------- scoring


_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|afraid|unable|not able)"
    r"|i (?:can't|cannot|can not|won't|will not) (?:help|assist|answer|provide|comply|do that)"
    r"|as an ai\b|as a language model"
    r"|i (?:don't|do not) have (?:access|enough information|the ability)"
    r"|unable to (?:help|assist|answer|provide))",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer.replace("\u2019", "'")))


def repetition(answer: str, n: int = 4) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 when it has none)."""
    words = answer.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    seen: set = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def question_metrics(row: dict, answer: str, n_tokens: int | None = None) -> dict:
    """Rule metrics of one answer; metrics that do not apply to the row's kind are None."""
    closed = bool(row.get("choices"))
    ref = row["reference"]
    em = None if closed else exact_match(answer, ref)
    correct = choice(answer, ref, choices=row["choices"]) if closed else None
    return {
        "accuracy": correct if closed else em,
        "exact_match": em,
        "token_f1": None if closed else token_f1(answer, ref),
        "choice_accuracy": correct,
        "length": n_tokens if n_tokens is not None else len(answer.split()),
        "repetition": repetition(answer),
        "refusal": float(is_refusal(answer)),
    }


def _defined(values: Sequence) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def aggregate(per_question: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean and 95% bootstrap interval of every metric; null where no question defines it."""
    out: dict = {"n": len(per_question),
                 "n_open": sum(q["choice_accuracy"] is None for q in per_question),
                 "n_closed": sum(q["choice_accuracy"] is not None for q in per_question)}
    ci95: dict = {}
    for name in METRICS:
        values = _defined([q.get(name) for q in per_question])
        if not values:
            out[name] = None
            continue
        mean, lo, hi = bootstrap_ci(values, n=n_boot, seed=seed)
        out[name], ci95[name] = mean, [lo, hi]
    out["ci95"] = ci95
    return out


def score_answers(rows: Sequence[dict], answers: Sequence[str], n_tokens: Sequence[int] | None = None,
                  extra: dict[str, Sequence[float | None]] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> tuple[list[dict], dict]:
    """Per-question rows (question, reference, answer and metrics) and the aggregates.

    `n_tokens` gives answer lengths in tokens (whitespace words when None); `extra` adds
    model-dependent per-question metrics, e.g. {"rm_score": [...], "logprob": [...]}.
    """
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} questions but {len(answers)} answers")
    per_question = []
    for i, (row, answer) in enumerate(zip(rows, answers)):
        record = {"question": row["question"], "reference": row["reference"], "answer": answer}
        if row.get("choices"):
            record["choices"] = list(row["choices"])
        record.update(question_metrics(row, answer, None if n_tokens is None else n_tokens[i]))
        for name, values in (extra or {}).items():
            record[name] = values[i]
        per_question.append(record)
    return per_question, aggregate(per_question, n_boot, seed)


def bootstrap_ci(values_a: Sequence[float], values_b: Sequence[float] | None = None, n: int = 1000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values_a` (or of the paired differences a - b) and its 95%
    percentile-bootstrap interval from `n` resamples of the questions. Pairs where either value
    is None or not finite are dropped; with nothing left all three are NaN."""
    import numpy as np

    a = np.array([np.nan if v is None else float(v) for v in values_a], dtype=np.float64)
    if values_b is not None:
        if len(values_b) != len(values_a):
            raise ValueError(f"paired bootstrap needs equal lengths, got {len(values_a)} and {len(values_b)}")
        a = a - np.array([np.nan if v is None else float(v) for v in values_b], dtype=np.float64)
    d = a[np.isfinite(a)]
    if d.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- comparing


def wins(model_q: Sequence[dict], base_q: Sequence[dict]) -> tuple[list[float], str]:
    """Per question 1 / 0.5 / 0 for model better / tie / worse, and the judge used."""
    if all(m.get("rm_score") is not None and b.get("rm_score") is not None for m, b in zip(model_q, base_q)):
        keys, judge = ("rm_score",), "reward_model"
    else:
        keys, judge = ("accuracy", "token_f1"), "accuracy, then token_f1"
    out = []
    for m, b in zip(model_q, base_q):
        result = 0.5
        for key in keys:
            if m.get(key) is not None and b.get(key) is not None and m[key] != b[key]:
                result = float(m[key] > b[key])
                break
        out.append(result)
    return out, judge


def compare(model_q: Sequence[dict], base_q: Sequence[dict], kl: Sequence[float] | None,
            n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Differences model - baseline with paired CIs, win rate and KL.

    Returns (summary, per-question lists {"win": [...], "kl": [...] or None})."""
    diff = {}
    for name in METRICS:
        a, b = [q.get(name) for q in model_q], [q.get(name) for q in base_q]
        mean, lo, hi = bootstrap_ci(a, b, n=n_boot, seed=seed)
        if not math.isnan(mean):
            diff[name] = {"mean": mean, "ci95": [lo, hi]}
    win, judge = wins(model_q, base_q)
    win_rate, wlo, whi = bootstrap_ci(win, n=n_boot, seed=seed)
    summary = {"diff": diff, "win_rate": win_rate, "win_rate_ci95": [wlo, whi], "win_judge": judge,
               "kl_to_baseline": None, "kl_to_baseline_ci95": None}
    if kl is not None:
        mean, lo, hi = bootstrap_ci(kl, n=n_boot, seed=seed)
        summary["kl_to_baseline"], summary["kl_to_baseline_ci95"] = mean, [lo, hi]
    return summary, {"win": win, "kl": list(kl) if kl is not None else None}


# ----------------------------------------------------------------------------- the whole run


@contextmanager
def _timer(timings: dict, name: str):
    started = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 3)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _model_passes(gen, base_gen, questions, cfg, timings):
    """Logprobs (coherence, KL; from the engines) and reward-model scores
    -> (extra, base_extra, kl or None)."""
    dtype = cfg.model.dtype
    extra: dict = {"logprob": [_mean_or_none(lp) for lp in gen.logprobs]}
    base_extra: dict = {}
    kl = None
    if base_gen is not None:
        base_extra["logprob"] = [_mean_or_none(lp) for lp in base_gen.logprobs]
        if base_gen.scored is not None:  # the model's answers under the baseline
            kl = [sum(m) - sum(b) for m, b in zip(gen.logprobs, base_gen.scored)]
    if cfg.eval.reward_model:
        from rlhf.scoring import RewardModelScorer

        with _timer(timings, "reward_model"):
            scorer = RewardModelScorer(cfg.eval.reward_model, dtype)
            extra["rm_score"] = scorer(list(questions), gen.answers)
            if base_gen is not None:
                base_extra["rm_score"] = scorer(list(questions), base_gen.answers)
            del scorer
            gc.collect()
    return extra, base_extra, kl


def evaluate(model: str, data: str, out_dir: str | Path, cfg: Config, baseline: str | None = None) -> dict:
    """Evaluate `model` (and optionally `baseline`) on held-out questions; write the report.

    Returns the report dict (the content of report.json): the aggregates of METRICS, `n`,
    `ci95`, and with a baseline also `baseline`, `diff`, `win_rate`, `kl_to_baseline`.
    """
    from rlhf.report import clean_json, write_report

    timings: dict = {}
    rows, info = load_eval_rows(data or cfg.eval.data, cfg)
    questions = [eval_question(r) for r in rows]
    model_path = resolve_model_path(str(model))
    base_path = resolve_model_path(str(baseline)) if baseline else None
    with _timer(timings, "generate"):
        gen = generate_answers(model_path, questions, cfg)
        base_gen = None
        if base_path == model_path:
            # Greedy decoding is deterministic: the same folder would answer the same again.
            base_gen = dataclasses.replace(gen, scored=gen.logprobs)
        elif base_path:
            shared = same_vocabulary(model_path, base_path)  # else the KL is not defined
            base_gen = generate_answers(base_path, questions, cfg, also_score=gen if shared else None)
    extra, base_extra, kl = _model_passes(gen, base_gen, questions, cfg, timings)
    n_boot, seed = cfg.eval.bootstrap, cfg.eval.seed
    model_q, agg = score_answers(rows, gen.answers, gen.n_tokens, extra, n_boot, seed)
    result = {**agg, "model": model_path, "data": info, "max_new_tokens": cfg.eval.max_new_tokens,
              "reward_model": cfg.eval.reward_model or None, "bootstrap": n_boot}
    base_q = None
    if base_gen is not None:
        base_q, base_agg = score_answers(rows, base_gen.answers, base_gen.n_tokens, base_extra, n_boot, seed)
        summary, per_question = compare(model_q, base_q, kl, n_boot, seed)
        result["baseline"] = {**base_agg, "model": base_path}
        result.update(summary)
        for i, q in enumerate(model_q):
            q["win"] = per_question["win"][i]
            q["kl"] = per_question["kl"][i] if per_question["kl"] is not None else None
    result["timing"] = timings
    write_report(result, model_q, base_q, out_dir)
    return clean_json(result)
