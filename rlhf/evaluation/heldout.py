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
  - judge_<aspect>: an LLM judge's 1-5 rating of the answer's accuracy, relevance, clarity and
    helpfulness, with eval.judge_url (rlhf/evaluation/judge.py); null where its reply gave no
    rating; `judge` in the report says which judge and how many replies it parsed.
  - human: with eval.review_db, the reviewers' mean 1-5 rating per aspect of the answers the
    model (eval.review_model) wrote in production, shown beside the judge's; those are other
    questions than the held-out ones, so the two are side by side, not paired.
  - Confidence intervals: 95% percentile bootstrap over questions (paired for differences).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf.config.tree import Config
from rlhf.data.prompts import encode_questions
from rlhf.data.readers import DataError
from rlhf.data.tables import is_generated, load_source
from rlhf.evaluation.metrics import ASPECTS, compare, score_answers
from rlhf.evaluation.relevance import SentenceEncoder, perplexities, similarities
from rlhf.models.loading import load_tokenizer, resolve_model_path
from rlhf.models.offline import OfflineEngine, inference_config

"""Per-question metrics; each aggregate is the mean over the questions where it is defined."""
"""Sequences per HF forward pass when scoring answers on CPU."""


# ----------------------------------------------------------------------------- data


def load_eval_rows(spec: str, cfg: Config) -> tuple[list[dict], dict]:
    """Held-out rows {question, reference, choices, context} and a summary of the source.

    Accepts QA files (`answer`, optional `choices`/`context`), prompt files (`reference`) and
    `gym:<task>` or `synth:<domain>` (eval.size questions from eval.seed). Rows without a reference are skipped;
    a source with none at all is an error that says what is needed.
    """
    if not spec:
        raise DataError("no evaluation data: pass --data FILE or set eval.data")
    if is_generated(spec):
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
class EvalAnswers:
    """Greedy answers of one model to N questions."""

    prompt_ids: list[list[int]]  # [N][P_i] chat-templated prompt tokens
    answer_ids: list[list[int]]  # [N][T_i] generated tokens (with a final EOS when it stopped)
    answers: list[str]  # [N] decoded answers, special tokens removed
    n_tokens: list[int]  # [N] answer length without the final EOS
    logprobs: list[list[float]]  # [N][T_i] the model's logprob of each answer token
    scored: list[list[float]] | None = None  # [M][T_j] logprobs of another model's answers (teacher-forced)


def generate_answers(model_path: str, questions: Sequence[str], cfg: Config,
                     also_score: EvalAnswers | None = None) -> EvalAnswers:
    """Greedy answers from an in-process vLLM engine, freed before returning (a second engine,
    the baseline's, usually follows). The engine reports each answer token's logprob as it
    samples; with `also_score`, the same engine also scores that generation's answers
    (teacher-forced prompt logprobs), for the KL between the two models. The engine's weights
    are in model.inference_dtype."""
    cfg = inference_config(cfg)
    tok = load_tokenizer(model_path)
    prompt_ids = encode_questions(tok, questions, cfg)
    params = {"temperature": 0.0, "max_tokens": cfg.eval.max_new_tokens, "logprobs": 0}
    with OfflineEngine(model_path, cfg, cfg.eval.max_new_tokens) as engine:
        samples = [s[0] for s in engine.sample(prompt_ids, params)]
        scored = (engine.teacher_forced_logprobs(also_score.prompt_ids, also_score.answer_ids)
                  if also_score else None)
    special = set(tok.all_special_ids)
    answer_ids = [s.token_ids for s in samples]
    n_tokens = [len(ids) - int(bool(ids) and s.finish_reason == "stop" and ids[-1] in special)
                for ids, s in zip(answer_ids, samples)]
    logprobs = [s.logprobs or [] for s in samples]
    return EvalAnswers(prompt_ids, answer_ids, [s.text for s in samples], n_tokens, logprobs, scored)


def same_vocabulary(path_a: str, path_b: str) -> bool:
    return load_tokenizer(path_a).get_vocab() == load_tokenizer(path_b).get_vocab()


# ----------------------------------------------------------------------------- the whole run


@contextmanager
def _timer(timings: dict, name: str):
    started = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 3)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _relevance(extra: dict, base_extra: dict, gen, base_gen, questions, references) -> None:
    encoder = SentenceEncoder()
    for out, answers in ((extra, gen), (base_extra, base_gen)):
        if answers is not None:
            out["relevance"] = similarities(encoder, answers.answers, questions)
            out["reference_similarity"] = similarities(encoder, answers.answers, references)
    del encoder
    gc.collect()


def _model_passes(gen, base_gen, questions, references, cfg, timings):
    """Logprobs (coherence, KL; from the engines) and reward-model scores
    -> (extra, base_extra, kl or None)."""
    dtype = cfg.model.dtype
    extra: dict = {"logprob": [_mean_or_none(lp) for lp in gen.logprobs]}
    base_extra: dict = {}
    kl = None
    if base_gen is not None:
        base_extra["logprob"] = [_mean_or_none(lp) for lp in base_gen.logprobs]
        base_extra["perplexity_base"] = perplexities(base_gen.logprobs)
        if base_gen.scored is not None:  # the model's answers under the baseline
            kl = [sum(m) - sum(b) for m, b in zip(gen.logprobs, base_gen.scored)]
            extra["perplexity_base"] = perplexities(base_gen.scored)
    with _timer(timings, "relevance"):
        _relevance(extra, base_extra, gen, base_gen, questions, references)
    if cfg.eval.reward_model:
        from rlhf.models.scorer import RewardModelScorer

        with _timer(timings, "reward_model"):
            scorer = RewardModelScorer(cfg.eval.reward_model, dtype)
            extra["rm_score"] = scorer(list(questions), gen.answers)
            if base_gen is not None:
                base_extra["rm_score"] = scorer(list(questions), base_gen.answers)
            del scorer
            gc.collect()
    return extra, base_extra, kl


def _human_ratings(cfg: Config) -> dict | None:
    """Reviewers' ratings of the evaluated model's production answers (eval.review_db), if any."""
    if not cfg.eval.review_db:
        return None
    from rlhf.evaluation.reviewed import reviewer_ratings

    return reviewer_ratings(cfg.eval.review_db, cfg.eval.review_model)


def _judge(cfg, extra, base_extra, gen, base_gen, questions, references) -> dict:
    """The LLM judge's 1-5 ratings of each answer (judge_<aspect>) and its reply, into `extra`
    (and `base_extra`); -> which judge, and how many of the model's answers it rated."""
    from rlhf.evaluation.judge import AnswerJudge, judge_summary

    judge = AnswerJudge(cfg.eval.judge_url, cfg.eval.judge_model)
    summary = {}
    for out, answers in ((extra, gen), (base_extra, base_gen)):
        if answers is None:
            continue
        rated = judge.rate_all(questions, references, answers.answers)
        for aspect in ASPECTS:
            out[f"judge_{aspect}"] = [r[aspect] if r else None for r, _ in rated]
        out["judge_reply"] = [text for _, text in rated]
        summary = summary or judge_summary([r for r, _ in rated])
    return {"url": cfg.eval.judge_url, "model": judge.model, "judged": summary["judged"],
            "unparsed": summary["unparsed"]}


def evaluate(model: str, data: str, out_dir: str | Path, cfg: Config, baseline: str | None = None,
             answers: dict | None = None) -> dict:
    """Evaluate `model` (and optionally `baseline`) on held-out questions; write the report.

    Returns the report dict (the content of report.json): the aggregates of METRICS, `n`,
    `ci95`, and with a baseline also `baseline`, `diff`, `win_rate`, `kl_to_baseline`.
    `answers`, when given, receives each model's answers by resolved path (for the ladder).
    """
    from rlhf.evaluation.report import clean_json, write_report

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
    if answers is not None:
        answers.update({model_path: gen.answers, **({base_path: base_gen.answers} if base_gen else {})})
    references = [str(r["reference"]) for r in rows]
    extra, base_extra, kl = _model_passes(gen, base_gen, questions, references, cfg, timings)
    judge = None
    if cfg.eval.judge_url:
        with _timer(timings, "judge"):
            judge = _judge(cfg, extra, base_extra, gen, base_gen, questions, references)
    n_boot, seed = cfg.eval.bootstrap, cfg.eval.seed
    model_q, agg = score_answers(rows, gen.answers, gen.n_tokens, extra, n_boot, seed)
    result = {**agg, "model": model_path, "data": info, "max_new_tokens": cfg.eval.max_new_tokens,
              "reward_model": cfg.eval.reward_model or None, "bootstrap": n_boot,
              "judge": judge, "human": _human_ratings(cfg)}
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
