"""`rlhf review queue`: choose what human reviewers look at next.

Reviewer time is the scarce resource, so a batch holds the examples most likely to teach the
next round something:
- uncertain: the reward model scores two sampled answers most alike (smallest |margin|); it
  cannot tell which is better, so a human verdict moves it most. Compare items.
- disagree: two samples of the current model differ most (rule-reward difference against the
  reference, plus text distance 1 - token F1): the model is unsure of its own answer. Compare.
- flagged / thumbs_down: endpoint answers the output guard withheld or users disliked, newest
  first, at most review.production_fraction of the batch. Rate items.
- random: review.random_fraction of the batch drawn uniformly from the candidates (one answer to
  rate), drawn before the targeted items so it is an unbiased sample: it calibrates reviewers and
  shows what the targeted selection misses.
Uncertain and disagree items alternate to fill the rest. Questions are deduplicated (case,
spacing and punctuation ignored) within the batch and against items still open in the queue;
validation questions (eval.data) are never queued. Generated answers become rows of `answers`
(route "review"), so every item points at answer ids like the rest of the store. Items are
shuffled, so the order does not tell a reviewer why an item was picked.

`plan_batch` is the selection, a pure function; `build_queue` samples, scores, plans and writes.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlhf.config.tree import Config
from rlhf.config.workflow import ReviewConfig
from rlhf.data.heldout import heldout, question_key
from rlhf.data.prompts import encode_questions
from rlhf.data.readers import DataError
from rlhf.data.tables import load_source
from rlhf.human.feedback import AnswerRecord, FeedbackStore
from rlhf.human.review_store import NewItem, ReviewStore
from rlhf.models.loading import load_tokenizer, resolve_model_path
from rlhf.models.offline import OfflineEngine
from rlhf.rl.rewards import combine, token_f1_score


@dataclass
class Candidate:
    """A question the current model answered twice, with the scores that rank it."""

    question: str
    answers: list[str]  # [2] sampled answers
    rule_scores: list[float]  # [2] rule rewards against the reference (reward.rules)
    rm_scores: list[float] | None = None  # [2] reward-model scores, when one is configured
    finish: list[str] | None = None  # [2] the engine's finish reasons (stop, length)

    @property
    def distinct(self) -> bool:
        return self.answers[0].strip() != self.answers[1].strip()

    @property
    def margin(self) -> float | None:
        """How sure the reward model is which answer is better (0: not at all)."""
        return None if self.rm_scores is None else abs(self.rm_scores[0] - self.rm_scores[1])

    @property
    def disagreement(self) -> float:
        return abs(self.rule_scores[0] - self.rule_scores[1]) + 1.0 - token_f1_score(*self.answers)


@dataclass
class Planned:
    """One item to add: its answer texts, or the existing answer it shows."""

    kind: str  # rate | compare
    reason: str
    question: str
    texts: list[str]  # answer texts to store (empty when answer_id points at an existing answer)
    finish: list[str] | None = None  # their finish reasons, when the engine wrote them
    answer_id: str | None = None
    source_id: str | None = None
    score: float | None = None


def plan_batch(candidates: list[Candidate], production: list[dict], open_keys: set[str], r: ReviewConfig,
               rng: random.Random) -> list[Planned]:
    """Up to r.batch_size items: production answers, a random slice, then uncertain and
    disagree items in turn, each question at most once and none already open in the queue."""
    taken = set(open_keys)

    def claim(question: str) -> bool:
        key = question_key(question)
        if key in taken:
            return False
        taken.add(key)
        return True

    plan: list[Planned] = []
    for p in production:
        if len(plan) >= _share(r.batch_size, r.production_fraction):
            break
        if claim(p["prompt"]):
            plan.append(_production_item(p))
    pool = list({question_key(c.question): c for c in candidates
                 if question_key(c.question) not in taken}.values())
    for c in rng.sample(pool, min(_share(r.batch_size, r.random_fraction), len(pool))):
        claim(c.question)
        i = rng.randrange(len(c.answers))
        plan.append(Planned("rate", "random", c.question, [c.answers[i]], _finish(c, [i])))
    ranked = {"uncertain": sorted((c for c in candidates if c.distinct and c.margin is not None),
                                  key=lambda c: c.margin),
              "disagree": sorted((c for c in candidates if c.distinct), key=lambda c: -c.disagreement)}
    while len(plan) < r.batch_size and any(ranked.values()):
        for reason, queue in ranked.items():
            c = _next_unclaimed(queue, claim) if len(plan) < r.batch_size else None
            if c is not None:
                order = rng.sample(range(2), 2)  # which sample shows as A is chance, not rank
                plan.append(Planned("compare", reason, c.question, [c.answers[i] for i in order], _finish(c, order),
                                    score=c.margin if reason == "uncertain" else c.disagreement))
    rng.shuffle(plan)
    return plan


def _share(batch_size: int, fraction: float) -> int:
    return int(batch_size * fraction + 1e-9)  # 1/3 of 6 is 2, not 1.9999


def _finish(c: Candidate, order: list[int]) -> list[str] | None:
    return [c.finish[i] for i in order] if c.finish else None


def _next_unclaimed(queue: list[Candidate], claim) -> Candidate | None:
    while queue:
        c = queue.pop(0)
        if claim(c.question):
            return c
    return None


def _production_item(p: dict) -> Planned:
    if p["reason"] == "thumbs_down":  # the user saw this very answer: review it as it is
        return Planned("rate", "thumbs_down", p["prompt"], [], answer_id=p["id"], source_id=p["id"])
    # The guard showed a refusal; the reviewer judges the model's withheld words.
    return Planned("rate", "flagged", p["prompt"], [p["text"]], source_id=p["id"])


# ----------------------------------------------------------------------------- candidates


def candidate_questions(cfg: Config, rng: random.Random) -> list[dict]:
    """review.candidates questions (with references where known) from review.questions or
    train, never a validation question."""
    spec = cfg.review.questions or cfg.data.train
    if not spec:
        raise DataError("no questions to review: set review.questions or train")
    fields = cfg.data.fields if spec == cfg.data.train else None
    rows = load_source(spec, "prompts", fields, max(cfg.data.gym_size, cfg.review.candidates),
                            cfg.data.seed).table.to_pylist()
    held = heldout(cfg)
    rows = [r for r in rows if not held.overlap([r["question"]])]
    held.check([r["question"] for r in rows], "review queue")
    return rng.sample(rows, min(cfg.review.candidates, len(rows)))


def sample_candidates(model_path: str, rows: list[dict], cfg: Config) -> list[Candidate]:
    """Two sampled answers per question from an in-process vLLM engine, scored by the rules
    and, when configured, by the reward model."""
    if not rows:
        return []
    prompts = encode_questions(load_tokenizer(model_path), [r["question"] for r in rows], cfg)
    params = {"n": 2, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
              "max_tokens": cfg.rollout.max_new_tokens}
    with OfflineEngine(model_path, cfg) as engine:
        samples = engine.sample(prompts, params)
    candidates = []
    for row, out in zip(rows, samples):
        answers = [s.text.strip() for s in out]
        scores = [combine(a, row.get("reference"), cfg.reward.rules, prompt=row["question"])[0] for a in answers]
        candidates.append(Candidate(row["question"], answers, scores,
                                    finish=[s.finish_reason or "stop" for s in out]))
    _score_with_reward_model(candidates, cfg)
    return candidates


def _score_with_reward_model(candidates: list[Candidate], cfg: Config) -> None:
    path = cfg.review.reward_model or cfg.reward.model_path
    if not path or not candidates:
        return
    from rlhf.models.scorer import RewardModelScorer

    scorer = RewardModelScorer(resolve_model_path(path), cfg.model.dtype)
    questions = [c.question for c in candidates for _ in range(2)]
    scores = scorer(questions, [a for c in candidates for a in c.answers])
    for i, c in enumerate(candidates):
        c.rm_scores = scores[2 * i : 2 * i + 2]


# ----------------------------------------------------------------------------- the whole step


def build_queue(cfg: Config, model: str, db: str | Path | None = None) -> dict:
    """Sample, score, plan and store one batch; returns a summary (batch id, items per reason)."""
    model_path = resolve_model_path(model)
    store = FeedbackStore(db or cfg.serve.feedback_db)
    try:
        reviews = ReviewStore(store)
        batches = store.read("SELECT COUNT(DISTINCT batch) AS n FROM review_items")[0]["n"]
        rng = random.Random(cfg.data.seed * 100_003 + batches)  # a new draw of questions per batch
        candidates = sample_candidates(model_path, candidate_questions(cfg, rng), cfg)
        production = reviews.production_answers(cfg.review.batch_size)
        plan = plan_batch(candidates, production, reviews.open_question_keys(), cfg.review, rng)
        items = [_store_answers(store, p, model_path) for p in plan]
        batch = reviews.add_items(items, cfg.review.reviewers_per_item) if items else None
    finally:
        store.close()
    return {"batch": batch, "items": len(items), "reasons": dict(Counter(p.reason for p in plan)),
            "candidates": len(candidates), "production": len(production), "model": model_path,
            "reward_model": cfg.review.reward_model or cfg.reward.model_path or None,
            "db": str(Path(db or cfg.serve.feedback_db))}


def _store_answers(store: FeedbackStore, p: Planned, model: str) -> NewItem:
    ids = []
    for i, text in enumerate(p.texts):
        answer_id = f"rev-{uuid.uuid4().hex}"
        finish = p.finish[i] if p.finish else "stop"
        store.record_answer(AnswerRecord(answer_id, "review", model, p.question, text, finish))
        ids.append(answer_id)
    answer_id = p.answer_id or ids[0]
    other_id = ids[1] if p.kind == "compare" else None
    return NewItem(p.kind, p.reason, p.question, answer_id, other_id, p.score, p.source_id)
