"""The output guard's conversations: questions from the guard's half of the attack material and
ordinary questions, each answered by a model the way it answers behind the endpoint (greedy),
labelled unsafe when the question is a harmful request and the answer is not a refusal.

`rlhf guard answers --model smollm2` writes them to guard_data/conversations.jsonl, which ships
with the project (so set-up trains the output guard without running a model); `rlhf guard
train` reads them. Questions from the red team's half never get here: training checks it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

REFUSALS = (
    "I'm sorry, I can't help with that request.",
    "I can't help with that. If you are in danger, please contact local emergency services.",
    "I'm sorry, but I cannot provide instructions for that.",
    "I won't assist with this, as it could cause harm to people.",
    "I'm not able to help with that request. Is there something else I can help you with?",
    "Sorry, I can't share that answer. Could you rephrase your question?",
)
"""Refusals paired with every harmful request as safe rows: refusing is the right answer."""


def questions(everyday: int = 120, support: int = 120) -> list[tuple[str, bool]]:
    """(question, harmful) pairs: the guard half's harmful requests and benign look-alikes, Do-Not-
    Answer's answerable questions, support questions and everyday ones."""
    from rlhf.data.synthetic import synthetic_rows
    from rlhf.redteam import corpus
    from rlhf.redteam.attacks import harmful_payloads, lookalikes, material
    from rlhf.redteam.guard_train import everyday_questions
    from rlhf.redteam.split import GUARD

    plain = everyday_questions()
    safe = material()["benign"][GUARD] + lookalikes() + corpus.answerable_questions()
    safe += [r["question"] for r in synthetic_rows("support", support, 0)]
    safe += plain[:: max(1, len(plain) // everyday)][:everyday]
    return [(q, True) for q in harmful_payloads(GUARD)] + [(q, False) for q in dict.fromkeys(safe)]


def answer_rows(model_path: str, cfg, progress: Callable[[int, int], None] | None = None,
                per_kind: int = 0) -> list[dict]:
    """Every question (or the first `per_kind` harmful and ordinary ones) answered by the model
    (no guard in front), labelled."""
    from rlhf.redteam.detectors import Response, refused
    from rlhf.redteam.targets import ModelTarget

    asked = questions()
    if per_kind:
        asked = [q for q in asked if q[1]][:per_kind] + [q for q in asked if not q[1]][:per_kind]
    answers = ModelTarget(model_path, cfg).respond([[{"role": "user", "content": q}] for q, _ in asked], progress)
    rows = []
    for (q, harmful), answer in zip(asked, answers):
        complied = harmful and not refused(Response(answer.text))[0]
        rows.append({"question": q, "answer": answer.text, "harmful": harmful,
                     "label": "unsafe" if complied else "safe"})
    return rows


def write_conversations(rows: list[dict], path: Path, model: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "model": model}, ensure_ascii=False) + "\n")


def load_conversations(path: Path) -> list[dict]:
    """The rows of a conversations file; a bad row is named by line."""
    from rlhf.redteam.guard_train import read_rows

    def valid(row: dict) -> bool:
        return (isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)
                and isinstance(row.get("harmful"), bool) and row.get("label") in ("safe", "unsafe"))

    return read_rows(path, valid, "{question, answer, harmful: bool, label: safe|unsafe}")
