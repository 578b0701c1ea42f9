"""Held-out questions stay unseen: every training input drops them, compared after normalising.

One `Heldout` is built from the evaluation set (`eval.data`, `eval.size`, `eval.seed`). Each
stage that reads questions (SFT data, pair generation, RM/DPO pairs, RL prompts, the review
queue) calls `drop` on its table, records how many rows it dropped, and calls `check` on what it
will really train on: overlap left after that is a bug, and the stage stops with the questions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from rlhf.data.readers import DataError
from rlhf.data.tables import is_generated, load_source

if TYPE_CHECKING:
    from rlhf.config.tree import Config


def question_key(text: str) -> str:
    """Questions that differ only in case, spacing, punctuation or Unicode form are one question."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


class ContaminationError(DataError):
    """A stage's training input still holds held-out questions after filtering."""


@dataclass(frozen=True)
class Heldout:
    keys: frozenset[str]  # question_key of every held-out question
    source: str = ""  # where they came from, for messages

    def __len__(self) -> int:
        return len(self.keys)

    def drop(self, table: pa.Table, column: str) -> tuple[pa.Table, int]:
        """`table` without the rows whose `column` is a held-out question, and how many went."""
        if not self.keys or table.num_rows == 0:
            return table, 0
        keep = [question_key(q or "") not in self.keys for q in table.column(column).to_pylist()]
        kept = table.filter(pa.array(keep, type=pa.bool_()))
        return kept, table.num_rows - kept.num_rows

    def overlap(self, questions: Iterable[str]) -> list[str]:
        """The questions (as given) that are held out."""
        return [q for q in questions if question_key(q or "") in self.keys]

    def check(self, questions: Iterable[str], stage: str) -> int:
        """0, or a ContaminationError naming the stage and the first overlapping questions."""
        found = self.overlap(questions)
        if found:
            shown = "; ".join(repr(q[:80]) for q in found[:3])
            raise ContaminationError(f"{stage}: {len(found)} training questions are held-out questions from "
                                     f"{self.source} ({shown}); they would make the evaluation a memory test")
        return 0


NOTHING_HELD_OUT = Heldout(frozenset())


def heldout_from(spec: str, size: int, seed: int, fields: dict | None = None) -> Heldout:
    """The held-out set of an evaluation source: `gym:<task>` (size questions from seed), a QA
    file or a prompts file."""
    if not spec:
        return NOTHING_HELD_OUT
    if is_generated(spec):
        table = load_source(spec, "prompts", None, size, seed).table
    else:
        try:
            table = load_source(spec, "qa", fields).table
        except DataError:
            table = load_source(spec, "prompts", fields).table
    return Heldout(frozenset(question_key(q) for q in table.column("question").to_pylist()), spec)


def heldout(cfg: Config) -> Heldout:
    """The evaluation set's questions; every training input drops them so they stay unseen."""
    return heldout_from(cfg.eval.data, cfg.eval.size, cfg.eval.seed, cfg.data.fields)


def without_heldout(table: pa.Table, column: str, cfg: Config, stage: str) -> tuple[pa.Table, int]:
    """`table` less the held-out questions, checked; and how many rows were dropped."""
    held = heldout(cfg)
    table, dropped = held.drop(table, column)
    held.check(table.column(column).to_pylist(), stage)
    return table, dropped
