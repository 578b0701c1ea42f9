"""Per-question metrics of held-out answers, their aggregates with bootstrap confidence
intervals, and the paired comparison of a model with a baseline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlhf.registry import Registry
from rlhf.rl.rewards import choice, exact_match, token_f1

AnswerMetric = Callable[[dict, str, "int | None"], "float | None"]


@dataclass(frozen=True)
class Metric:
    doc: str
    better: str | None  # "higher", "lower", or None where neither is better (length)
    of_answer: AnswerMetric | None = None  # (row, answer, n_tokens) -> value or None where it does
    # not apply; None for metrics of the model rather than the text (filled in by the evaluation)


METRICS: Registry[Metric] = Registry("evaluation metric")
"""Per-question metrics by name, in report order (`review.promote_metric` is one of them)."""


def metric(name: str, doc: str, better: str | None = "higher") -> Callable[[AnswerMetric], AnswerMetric]:
    """Register the decorated `(row, answer, n_tokens) -> float | None` as metric `name`."""

    def wrap(fn: AnswerMetric) -> AnswerMetric:
        METRICS.register(name)(Metric(doc, better, fn))
        return fn

    return wrap


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


def _closed(row: dict) -> bool:
    return bool(row.get("choices"))


@metric("accuracy", "choice correctness on closed-ended rows, exact match on open-ended ones")
def _accuracy(row: dict, answer: str, n_tokens: int | None) -> float:
    return _choice(row, answer, n_tokens) if _closed(row) else _exact(row, answer, n_tokens)


@metric("exact_match", "normalised exact match with the reference (open-ended rows)")
def _exact(row: dict, answer: str, n_tokens: int | None) -> float | None:
    return None if _closed(row) else exact_match(answer, row["reference"])


@metric("token_f1", "SQuAD token F1 against the reference (open-ended rows)")
def _f1(row: dict, answer: str, n_tokens: int | None) -> float | None:
    return None if _closed(row) else token_f1(answer, row["reference"])


@metric("choice_accuracy", "the picked option is the reference (closed-ended rows)")
def _choice(row: dict, answer: str, n_tokens: int | None) -> float | None:
    return choice(answer, row["reference"], choices=row["choices"]) if _closed(row) else None


METRICS.register("rm_score")(Metric("reward-model score of the answer (with eval.reward_model)", "higher"))
METRICS.register("logprob")(Metric("mean token logprob of the answer under the model", "higher"))
# Model-based (rlhf/evaluation/relevance.py), filled in by the evaluation:
METRICS.register("relevance")(Metric("cosine similarity of the answer to the question (MiniLM embeddings)", "higher"))
METRICS.register("reference_similarity")(Metric("cosine similarity of the answer to the reference (MiniLM)",
                                                "higher"))
METRICS.register("perplexity_base")(Metric("perplexity of the answer under the base model (coherence)", "lower"))
ASPECTS = ("accuracy", "relevance", "clarity", "helpfulness")
"""What reviewers (the review page) and the LLM judge (rlhf/evaluation/judge.py) rate 1-5."""
for _aspect in ASPECTS:  # with eval.judge_url
    METRICS.register(f"judge_{_aspect}")(Metric(f"LLM judge's {_aspect} rating, 1-5", "higher"))


@metric("length", "answer length in tokens (whitespace words without a tokenizer)", better=None)
def _length(row: dict, answer: str, n_tokens: int | None) -> float:
    return n_tokens if n_tokens is not None else len(answer.split())


@metric("repetition", "share of the answer's word 4-grams that repeat an earlier one", better="lower")
def _repetition(row: dict, answer: str, n_tokens: int | None) -> float:
    return repetition(answer)


@metric("refusal", "1 when the answer refuses (\"I'm sorry, I can't ...\")", better="lower")
def _refusal(row: dict, answer: str, n_tokens: int | None) -> float:
    return float(is_refusal(answer))


def question_metrics(row: dict, answer: str, n_tokens: int | None = None) -> dict:
    """Rule metrics of one answer; metrics that do not apply to the row's kind are None."""
    return {name: m.of_answer(row, answer, n_tokens) for name, m in METRICS.items() if m.of_answer is not None}


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
