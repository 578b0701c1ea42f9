"""The review queue and the reviewers' verdicts, kept in the feedback database.

Two tables beside `answers` and `feedback` (rlhf.human.feedback.connect creates them):
- review_items: what reviewers are shown. kind `rate` (one answer, rated 1-5 on accuracy,
  relevance, clarity and helpfulness) or `compare` (two answers to one question: which is
  better), why it was picked (`reason`), the answer ids it shows, and how many reviews it wants
  (`needed`). `source_id` is the endpoint answer a flagged or thumbs-down item came from.
- reviews: one row per item and reviewer, UNIQUE(item_id, reviewer): a second submit of the same
  review is refused (409) and nothing is written twice. Either kind may carry a corrected answer
  and a comment.

An item is in the queue (open) until it has `needed` reviews. A reviewer is shown the open
items they have not reviewed, oldest first; never why an item was picked, so the random
calibration items look like the others.

Export (rlhf.human.feedback.export_feedback merges these rows with the endpoint's feedback):
- ratings: an answer's rating is the mean over its reviewers of the mean of the four aspects,
  rounded half up.
- preferences: a compared pair goes to the answer most of its reviewers picked (a tie teaches
  nothing and is left out); a correction is preferred to every answer its item showed.
- corrections: the question with the corrected answer (kind qa).
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from rlhf.data.heldout import question_key
from rlhf.evaluation.metrics import ASPECTS
from rlhf.human.agreement import krippendorff_alpha, pairwise

KINDS = ("rate", "compare")
REASONS = ("uncertain", "disagree", "flagged", "thumbs_down", "random")

REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    batch TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rate', 'compare')),
    reason TEXT NOT NULL CHECK (reason IN ('uncertain', 'disagree', 'flagged', 'thumbs_down', 'random')),
    question TEXT NOT NULL,
    question_key TEXT NOT NULL,
    answer_id TEXT NOT NULL REFERENCES answers(id),
    other_id TEXT REFERENCES answers(id),
    source_id TEXT,
    score REAL,
    needed INTEGER NOT NULL CHECK (needed >= 1),
    CHECK ((kind = 'compare') = (other_id IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS review_items_key ON review_items(question_key);
CREATE INDEX IF NOT EXISTS review_items_source ON review_items(source_id);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    item_id TEXT NOT NULL REFERENCES review_items(id),
    reviewer TEXT NOT NULL,
    accuracy INTEGER CHECK (accuracy BETWEEN 1 AND 5),
    relevance INTEGER CHECK (relevance BETWEEN 1 AND 5),
    clarity INTEGER CHECK (clarity BETWEEN 1 AND 5),
    helpfulness INTEGER CHECK (helpfulness BETWEEN 1 AND 5),
    preferred_id TEXT,
    correction TEXT,
    comment TEXT,
    UNIQUE (item_id, reviewer)
);
"""


class ReviewError(ValueError):
    """A review that cannot be stored; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class NewItem:
    """One item for the queue; its answers are already rows of `answers`."""

    kind: str  # rate | compare
    reason: str  # one of REASONS
    question: str
    answer_id: str
    other_id: str | None = None  # the second answer of a compare item
    score: float | None = None  # what ranked it: RM margin, disagreement, ...
    source_id: str | None = None  # the endpoint answer a flagged / thumbs-down item came from


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


class ReviewStore:
    """Review reads and writes on a FeedbackStore's connection (same file, same lock)."""

    def __init__(self, store):
        self.store = store

    # ------------------------------------------------------------------ the queue

    def add_items(self, items: list[NewItem], needed: int, batch: str | None = None) -> str:
        """Insert a batch of items in one transaction; returns the batch id."""
        batch = batch or f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = time.time()
        with self.store.transaction(durable=True) as conn:
            for i, it in enumerate(items):
                if it.kind not in KINDS or it.reason not in REASONS:
                    raise ValueError(f"bad item kind/reason {it.kind}/{it.reason}")
                conn.execute(
                    "INSERT INTO review_items (id, created, batch, kind, reason, question, question_key, answer_id, "
                    "other_id, source_id, score, needed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (f"item-{uuid.uuid4().hex[:12]}", now + i * 1e-6, batch, it.kind, it.reason, it.question,
                     question_key(it.question), it.answer_id, it.other_id, it.source_id, it.score, needed))
        return batch

    def open_question_keys(self) -> set[str]:
        """Questions of items still waiting for reviews (a new batch must not repeat them)."""
        rows = self.store.read("SELECT question_key FROM review_items i WHERE "
                               "(SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.id) < i.needed")
        return {r["question_key"] for r in rows}

    def production_answers(self, limit: int) -> list[dict]:
        """Up to `limit` newest endpoint answers of each kind worth a reviewer's look and never
        queued: answers the output guard withheld (with the model's withheld text) and answers
        whose latest thumb is down. Newest first."""
        fresh = "NOT EXISTS (SELECT 1 FROM review_items i WHERE i.source_id = a.id)"
        flagged = self.store.read(
            "SELECT a.id, a.prompt, a.withheld AS text, 'flagged' AS reason, a.created FROM answers a "
            "WHERE a.blocked IS NOT NULL AND TRIM(COALESCE(a.withheld, '')) != '' AND " + fresh +
            " ORDER BY a.created DESC LIMIT ?", (limit,))
        down = self.store.read(
            "SELECT a.id, a.prompt, a.answer AS text, 'thumbs_down' AS reason, a.created FROM answers a "
            "WHERE a.blocked IS NULL AND (SELECT f.thumbs FROM feedback f WHERE f.answer_id = a.id AND "
            "f.kind = 'thumbs' ORDER BY f.id DESC LIMIT 1) = 'down' AND " + fresh +
            " ORDER BY a.created DESC LIMIT ?", (limit,))
        return sorted(flagged + down, key=lambda r: -r["created"])

    def queue_for(self, reviewer: str, limit: int = 50) -> dict:
        """The open items `reviewer` has not reviewed (first `limit`), and their progress."""
        open_sql = ("FROM review_items i WHERE (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.id) < i.needed "
                    "AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id = i.id AND r.reviewer = ?)")
        rows = self.store.read(
            "SELECT i.id, i.kind, i.question, i.answer_id, i.other_id, a.answer AS answer_text, "
            "o.answer AS other_text FROM review_items i JOIN answers a ON a.id = i.answer_id "
            "LEFT JOIN answers o ON o.id = i.other_id WHERE i.id IN (SELECT i.id " + open_sql + ") "
            "ORDER BY i.created, i.id LIMIT ?", (reviewer, limit))
        left = self.store.read("SELECT COUNT(*) AS n " + open_sql, (reviewer,))[0]["n"]
        done = self.store.read("SELECT COUNT(*) AS n FROM reviews WHERE reviewer = ?", (reviewer,))[0]["n"]
        items = []
        for r in rows:
            answers = [{"id": r["answer_id"], "text": r["answer_text"]}]
            if r["kind"] == "compare":
                answers.append({"id": r["other_id"], "text": r["other_text"]})
            items.append({"id": r["id"], "kind": r["kind"], "question": r["question"], "answers": answers})
        return {"reviewer": reviewer, "items": items, "done": done, "left": left}

    # ------------------------------------------------------------------ reviews

    def submit(self, item_id: str, reviewer: str, ratings: dict | None = None, preferred: str | None = None,
               correction: str | None = None, comment: str | None = None) -> int:
        """Store one review in one durable transaction; returns its row id. Raises ReviewError:
        404 for an item not in the queue, 400 for a review that does not fit the item, 409 for a
        second review of the item by the same reviewer or an item that has all its reviews."""
        if not reviewer or not reviewer.strip():
            raise ReviewError(400, "reviewer is empty", "reviewer")
        if correction is not None and not correction.strip():
            raise ReviewError(400, "correction is empty; leave it out instead", "correction")
        with self.store.transaction(durable=True) as conn:
            item = conn.execute("SELECT * FROM review_items WHERE id = ?", (item_id,)).fetchone()
            if item is None:
                raise ReviewError(404, f"no item '{item_id}' in the review queue", "item_id", "item_not_found")
            values = _fits(item, ratings, preferred)
            if conn.execute("SELECT 1 FROM reviews WHERE item_id = ? AND reviewer = ?", (item_id, reviewer)).fetchone():
                raise ReviewError(409, f"{reviewer} has already reviewed this item; a review is stored once",
                                  "item_id", "already_reviewed")
            count = conn.execute("SELECT COUNT(*) FROM reviews WHERE item_id = ?", (item_id,)).fetchone()[0]
            if count >= item["needed"]:
                raise ReviewError(409, f"item '{item_id}' already has its {item['needed']} review(s) and has left "
                                  "the queue", "item_id", "item_closed")
            try:
                cur = conn.execute(
                    "INSERT INTO reviews (created, item_id, reviewer, accuracy, relevance, clarity, helpfulness, "
                    "preferred_id, correction, comment) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (time.time(), item_id, reviewer, *values, preferred, correction, comment))
            except sqlite3.IntegrityError:  # a concurrent writer on another connection got there first
                raise ReviewError(409, f"{reviewer} has already reviewed this item", "item_id",
                                  "already_reviewed") from None
        return cur.lastrowid

    def reviews(self) -> list[dict]:
        return self.store.read("SELECT * FROM reviews ORDER BY id")

    def agreement(self) -> dict:
        """Agreement between reviewers on items that several reviewed (see rlhf/human/agreement.py)."""
        rows = self.store.read("SELECT r.*, i.kind FROM reviews r JOIN review_items i ON i.id = r.item_id "
                               "ORDER BY r.id")
        rated: dict[str, list[dict]] = defaultdict(list)
        picks: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            (rated[r["item_id"]] if r["kind"] == "rate" else picks[r["item_id"]]).append(
                r if r["kind"] == "rate" else r["preferred_id"])
        aspects = {}
        for aspect in ASPECTS:
            units = [[r[aspect] for r in rs] for rs in rated.values()]
            aspects[aspect] = {**pairwise(units), "alpha": krippendorff_alpha(units, "interval")}
        overall = [[sum(r[a] for a in ASPECTS) / len(ASPECTS) for r in rs] for rs in rated.values()]
        units = list(picks.values())
        return {"reviews": len(rows), "reviewers": dict(Counter(r["reviewer"] for r in rows)),
                "rate": {"items": len(rated), "aspects": aspects,
                         "overall": {**pairwise(overall), "alpha": krippendorff_alpha(overall, "interval")}},
                "compare": {"items": len(picks), **pairwise(units, numeric=False),
                            "alpha": krippendorff_alpha(units, "nominal")}}


def _fits(item, ratings: dict | None, preferred: str | None) -> tuple:
    """The four rating values to store; 400 unless the review matches the item's kind."""
    if item["kind"] == "rate":
        if preferred is not None:
            raise ReviewError(400, "this item shows one answer: rate it, there is nothing to prefer", "preferred")
        if not isinstance(ratings, dict):
            raise ReviewError(400, f"rate the answer 1-5 on each of: {', '.join(ASPECTS)}", "ratings")
        unknown = set(ratings) - set(ASPECTS)
        if unknown:
            raise ReviewError(400, f"unknown aspect(s) {sorted(unknown)}; valid: {', '.join(ASPECTS)}", "ratings")
        for aspect in ASPECTS:
            value = ratings.get(aspect)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise ReviewError(400, f"ratings.{aspect} must be an integer from 1 to 5, got {value!r}",
                                  f"ratings.{aspect}")
        return tuple(ratings[a] for a in ASPECTS)
    if ratings is not None:
        raise ReviewError(400, "this item compares two answers: pick the better one (preferred), no ratings",
                          "ratings")
    if preferred not in (item["answer_id"], item["other_id"]):
        raise ReviewError(400, "preferred must be the id of one of the item's two answers", "preferred")
    return (None,) * len(ASPECTS)


# ----------------------------------------------------------------------------- export


def _reviewed(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT r.*, i.kind, i.question, i.answer_id, i.other_id, a.answer AS answer_text, "
        "o.answer AS other_text FROM reviews r JOIN review_items i ON i.id = r.item_id "
        "JOIN answers a ON a.id = i.answer_id LEFT JOIN answers o ON o.id = i.other_id ORDER BY r.id").fetchall()


def review_ratings(conn: sqlite3.Connection) -> dict[str, dict]:
    """answer id -> {prompt, response, rating}: mean over reviewers of the mean aspect rating."""
    scores: dict[str, list[float]] = defaultdict(list)
    texts: dict[str, tuple[str, str]] = {}
    for r in _reviewed(conn):
        if r["kind"] == "rate":
            scores[r["answer_id"]].append(sum(r[a] for a in ASPECTS) / len(ASPECTS))
            texts[r["answer_id"]] = (r["question"], r["answer_text"])
    return {aid: {"prompt": texts[aid][0], "response": texts[aid][1],
                  "rating": _round_half_up(sum(v) / len(v))} for aid, v in scores.items()}


def review_preferences(conn: sqlite3.Connection) -> list[dict]:
    """Majority pick of each compared pair, then every correction over the answers it replaces."""
    reviewed = _reviewed(conn)
    picks: dict[str, Counter] = defaultdict(Counter)
    shown: dict[str, sqlite3.Row] = {}
    out = []
    for r in reviewed:
        shown[r["item_id"]] = r
        if r["kind"] == "compare":
            picks[r["item_id"]][r["preferred_id"]] += 1
    for item_id, votes in picks.items():
        ranked = votes.most_common(2)
        if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
            continue  # reviewers split evenly
        r = shown[item_id]
        chosen, rejected = ((r["answer_text"], r["other_text"]) if ranked[0][0] == r["answer_id"]
                            else (r["other_text"], r["answer_text"]))
        out.append({"prompt": r["question"], "chosen": chosen, "rejected": rejected})
    for r in reviewed:
        if r["correction"] is not None:
            for text in (r["answer_text"], r["other_text"]):
                if text is not None:
                    out.append({"prompt": r["question"], "chosen": r["correction"], "rejected": text})
    return out


def review_corrections(conn: sqlite3.Connection) -> list[dict]:
    return [{"question": r["question"], "answer": r["correction"]} for r in _reviewed(conn)
            if r["correction"] is not None]
