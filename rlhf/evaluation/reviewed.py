"""Reviewers' 1-5 ratings of one model's production answers, read from `rlhf serve`'s feedback
database (written by rlhf/human/review_store.py), to show beside the automatic ratings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rlhf.data.readers import DataError
from rlhf.evaluation.metrics import ASPECTS


def reviewer_ratings(db: str | Path, model: str) -> dict:
    """The mean of each aspect over every review of a `rate` item showing an answer `model` wrote
    (answers.model, e.g. 'rlhf-qa@v2'), and how many reviews and answers that covers."""
    if not Path(db).is_file():
        raise DataError(f"eval.review_db: {db} does not exist; give `rlhf serve`'s feedback database")
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT r.accuracy, r.relevance, r.clarity, r.helpfulness, i.answer_id FROM reviews r "
            "JOIN review_items i ON i.id = r.item_id JOIN answers a ON a.id = i.answer_id "
            "WHERE i.kind = 'rate' AND a.model = ?", (model,)).fetchall()
    except sqlite3.OperationalError as exc:
        raise DataError(f"eval.review_db: {db} is not a feedback database with reviews ({exc})") from None
    finally:
        conn.close()
    means = {a: (sum(r[a] for r in rows) / len(rows) if rows else None) for a in ASPECTS}
    return {"model": model, **means, "reviews": len(rows), "answers": len({r["answer_id"] for r in rows})}
