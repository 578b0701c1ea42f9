"""Durable record of answers, user feedback and guard decisions, and its export for training.

One SQLite file in WAL mode. Feedback commits with `synchronous=FULL`: feedback the endpoint
acknowledged is on disk and survives a restart of Serve or of the machine. Answers (recorded
with their question, so feedback by answer id can be matched to question and answer) commit
with `synchronous=NORMAL`: they survive a crash or restart of any process, and only a power cut
can lose the last few; it keeps an fsync off every answer's path (the commit latencies of both
are in bench/README.md, Measurements). Several replicas on
one machine may share the file (SQLite locks it; writers wait up to `busy_timeout`). On a
multi-node cluster, point `serve.feedback_db` at storage every node sees.

Export (`rlhf data feedback-export DB OUT_DIR`) writes files in the schemas of rlhf/data/kinds.py:
- ratings.jsonl: prompt, response, rating (1-5). The latest rating of an answer wins; an answer
  with only thumbs counts thumbs up as 5 and thumbs down as 1.
- preferences.jsonl: prompt, chosen, rejected. From "preferred of two" feedback, and from every
  correction (the corrected answer is preferred to the original).
- corrections.jsonl: question, answer (kind qa), for supervised fine-tuning.
Refusals written by the guard are not the model's words and are left out. Reviews from the
review page (rlhf/human/review_store.py, same file) are merged in: a reviewed answer's rating
replaces a user's, compared pairs and corrections add preference pairs and QA rows.

When the output guard replaces an answer with a refusal, the model's own text is kept in
`answers.withheld` (never sent to the user) so a reviewer can judge whether the guard was right.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf.human.review_store import REVIEW_SCHEMA, review_corrections, review_preferences, review_ratings

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    messages TEXT,
    answer TEXT NOT NULL,
    finish_reason TEXT,
    blocked TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    withheld TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    answer_id TEXT NOT NULL REFERENCES answers(id),
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'thumbs', 'preference', 'correction')),
    rating INTEGER,
    thumbs TEXT,
    other_id TEXT REFERENCES answers(id),
    preferred_id TEXT,
    correction TEXT,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback(answer_id);
CREATE TABLE IF NOT EXISTS guard_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    answer_id TEXT,
    stage TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    score REAL
);
"""


class FeedbackError(ValueError):
    """Feedback that cannot be stored; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass
class AnswerRecord:
    """One answer the endpoint gave (a refusal included)."""

    id: str
    route: str  # ask, chat or completions
    model: str
    prompt: str  # the question: /ask's question, the last user message, or the completion prompt
    answer: str
    finish_reason: str
    blocked: str | None = None  # the guard's reason code when the answer is a refusal
    messages: list | None = None  # the full chat, for chat completions
    prompt_tokens: int = 0
    completion_tokens: int = 0
    withheld: str | None = None  # the model's text when the output guard replaced it with a refusal


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(answers)")}
    if "withheld" not in columns:  # a database written before the column existed
        conn.execute("ALTER TABLE answers ADD COLUMN withheld TEXT")
    conn.executescript(REVIEW_SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


class FeedbackStore:
    """Thread-safe; every write is one transaction, committed when the call returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def transaction(self, durable: bool):
        """One write transaction on the connection, committed when the block ends (rolled back
        if it raises); `durable` commits with an fsync (synchronous=FULL)."""
        with self._lock:
            # Per transaction: the pragma applies to the commits that follow on this connection.
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def _write(self, statements: list[tuple[str, tuple]], durable: bool) -> list[int]:
        with self.transaction(durable) as conn:
            return [conn.execute(sql, args).lastrowid for sql, args in statements]

    def read(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    def record_answer(self, rec: AnswerRecord, decisions: list = ()) -> None:
        """The answer and every guard decision made about it, in one transaction."""
        now = time.time()
        messages = json.dumps(rec.messages, ensure_ascii=False) if rec.messages is not None else None
        stmts = [("INSERT INTO answers (id, created, route, model, prompt, messages, answer, finish_reason, blocked, "
                  "prompt_tokens, completion_tokens, withheld) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                  (rec.id, now, rec.route, rec.model, rec.prompt, messages, rec.answer, rec.finish_reason,
                   rec.blocked, rec.prompt_tokens, rec.completion_tokens, rec.withheld))]
        for d in decisions:
            stmts.append(("INSERT INTO guard_decisions (created, answer_id, stage, allowed, reason, detail, score) "
                          "VALUES (?,?,?,?,?,?,?)",
                          (now, rec.id, d.stage, int(d.allowed), d.reason, d.detail, d.score)))
        self._write(stmts, durable=False)

    def get_answer(self, answer_id: str) -> dict | None:
        with self._lock:
            row = self.conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
        return dict(row) if row else None

    def add_feedback(self, answer_id: str, rating: int | None = None, thumbs: str | None = None,
                     other_id: str | None = None, preferred: str | None = None,
                     correction: str | None = None, comment: str | None = None) -> list[int]:
        """Store each kind of feedback given as its own row; returns the row ids."""
        answer = self.get_answer(answer_id)
        if answer is None:
            raise FeedbackError(404, f"no answer with id '{answer_id}'", "id")
        if preferred is not None:
            other = self.get_answer(other_id or "")
            if other is None:
                raise FeedbackError(404, f"no answer with id '{other_id}'", "other_id")
            if other["prompt"] != answer["prompt"]:
                raise FeedbackError(400, "id and other_id answer different questions; a preference "
                                         "compares two answers to the same question", "other_id")
        now, sql = time.time(), ("INSERT INTO feedback (created, answer_id, kind, rating, thumbs, other_id, "
                                 "preferred_id, correction, comment) VALUES (?,?,?,?,?,?,?,?,?)")
        rows = []
        if rating is not None:
            rows.append((sql, (now, answer_id, "rating", rating, None, None, None, None, comment)))
        if thumbs is not None:
            rows.append((sql, (now, answer_id, "thumbs", None, thumbs, None, None, None, comment)))
        if preferred is not None:
            rows.append((sql, (now, answer_id, "preference", None, None, other_id, preferred, None, comment)))
        if correction is not None:
            rows.append((sql, (now, answer_id, "correction", None, None, None, None, correction, comment)))
        return self._write(rows, durable=True)

    def stats(self) -> dict:
        with self._lock:
            answers = self.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            kinds = dict(self.conn.execute("SELECT kind, COUNT(*) FROM feedback GROUP BY kind").fetchall())
            blocked = dict(self.conn.execute(
                "SELECT reason, COUNT(*) FROM guard_decisions WHERE allowed = 0 GROUP BY reason").fetchall())
        return {"answers": answers, "feedback": kinds, "blocked": blocked}

    def recent_decisions(self, limit: int = 50) -> list[dict]:
        with self._lock:
            rows = self.conn.execute("SELECT * FROM guard_decisions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def ping(self) -> None:
        with self._lock:
            self.conn.execute("SELECT 1").fetchone()


# ----------------------------------------------------------------------------- export


def _ratings(conn: sqlite3.Connection) -> dict[str, dict]:
    """answer id -> row: latest explicit rating per answer; thumbs (latest) only where no rating exists."""
    rows = conn.execute(
        "SELECT f.answer_id, f.kind, f.rating, f.thumbs, a.prompt, a.answer FROM feedback f "
        "JOIN answers a ON a.id = f.answer_id WHERE a.blocked IS NULL AND f.kind IN ('rating', 'thumbs') "
        "ORDER BY f.id").fetchall()
    best: dict[str, tuple[int, dict]] = {}
    for r in rows:
        priority = 1 if r["kind"] == "rating" else 0
        value = r["rating"] if r["kind"] == "rating" else (5 if r["thumbs"] == "up" else 1)
        if r["answer_id"] not in best or priority >= best[r["answer_id"]][0]:
            best[r["answer_id"]] = (priority, {"prompt": r["prompt"], "response": r["answer"], "rating": value})
    return {answer_id: row for answer_id, (_, row) in best.items()}


def _preferences(conn: sqlite3.Connection) -> list[dict]:
    pairs = []
    rows = conn.execute(
        "SELECT f.kind, f.answer_id, f.other_id, f.preferred_id, f.correction, a.prompt, a.answer, "
        "a.blocked, o.answer AS other_answer, o.blocked AS other_blocked FROM feedback f "
        "JOIN answers a ON a.id = f.answer_id LEFT JOIN answers o ON o.id = f.other_id "
        "WHERE f.kind IN ('preference', 'correction') ORDER BY f.id").fetchall()
    for r in rows:
        if r["kind"] == "preference":
            if r["blocked"] or r["other_blocked"]:
                continue
            chosen, rejected = ((r["answer"], r["other_answer"]) if r["preferred_id"] == r["answer_id"]
                                else (r["other_answer"], r["answer"]))
        else:
            chosen, rejected = r["correction"], r["answer"]
        pairs.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return pairs


def _distinct_pairs(pairs: list[dict]) -> list[dict]:
    """Identical texts teach nothing; repeated clicks (or reviewers) count once."""
    seen, out = set(), []
    for p in pairs:
        key = (p["prompt"], p["chosen"], p["rejected"])
        if p["chosen"].strip() != p["rejected"].strip() and key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _corrections(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT a.prompt, f.correction FROM feedback f JOIN answers a ON a.id = f.answer_id "
        "WHERE f.kind = 'correction' ORDER BY f.id").fetchall()
    return [{"question": r["prompt"], "answer": r["correction"]} for r in rows]


def _tables(conn: sqlite3.Connection, production: bool) -> dict[str, tuple[str, list[dict]]]:
    ratings = _ratings(conn) if production else {}
    ratings.update(review_ratings(conn))  # a reviewer's verdict replaces a user's on the same answer
    prefs = (_preferences(conn) if production else []) + review_preferences(conn)
    fixes = (_corrections(conn) if production else []) + review_corrections(conn)
    unique = {(c["question"], c["answer"]): c for c in fixes}
    return {"ratings": ("ratings", list(ratings.values())), "preferences": ("preferences", _distinct_pairs(prefs)),
            "corrections": ("qa", list(unique.values()))}


def export_feedback(db: str | Path, out_dir: str | Path, production: bool = True) -> dict[str, dict]:
    """Write ratings.jsonl, preferences.jsonl and corrections.jsonl from the endpoint's feedback
    (unless `production` is False) and the reviews; returns {name: {path, rows, kind}}."""
    from rlhf.data.kinds import SCHEMAS, validate_rows
    from rlhf.data.tables import save

    db = Path(db)
    if not db.is_file():
        raise FileNotFoundError(f"feedback database {db} does not exist")
    conn = connect(db)
    try:
        tables = _tables(conn, production)
    finally:
        conn.close()
    out = {}
    for name, (kind, rows) in tables.items():
        schema = SCHEMAS[kind]
        # Keep what training can read: an empty answer (a model that stopped at once) teaches
        # nothing and the loader would refuse it; how many were left out, and why, stays in the info.
        checked = validate_rows([{f: row.get(f) for f in schema.names} for row in rows], kind, f"{db}:{name}")
        path = save(checked.table, Path(out_dir) / f"{name}.jsonl")
        out[name] = {"path": str(path), "rows": checked.table.num_rows, "kind": kind,
                     "dropped": checked.summary()["reasons"]}
    return out
