"""RL prompts weighted towards the question types where RL has something to sharpen.

RL with a group-relative advantage sharpens what the policy already knows: it moves the first
sample's accuracy (mean@k) towards what a vote over k samples gets (maj@k), and cannot teach a
skill whose answers are guesses, where the vote is no better than one sample (bench/README.md,
"RL where SFT left something to sharpen"). The pairs stage samples k answers to a few hundred
training questions and keeps each question's mean rule score and the score of its most frequent
answer (`pairs.probe.parquet`, from `probe_scores`). `sharpening_headroom` turns those into maj@k -
mean@k per question type (the `type` column: open, yes_no, choice...), and `weight_by_headroom`
keeps every question of the type with the most headroom and the others in proportion, so the
RL stage's prompts follow what it can improve. The probe reads training questions only: held-out
questions never steer the mix.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from rlhf.rl.rewards import normalize_answer

TYPE_COLUMN = "type"


def probe_scores(answers: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """One question's k sampled answers and their rule scores -> `pass_rate` (mean score, mean@k),
    `majority_score` (the score of the most frequent answer after normalising, averaged over tied
    answers: maj@k) and `score_spread` (max - min)."""
    by_answer: dict[str, list[float]] = defaultdict(list)
    for answer, score in zip(answers, scores, strict=True):
        by_answer[normalize_answer(answer)].append(score)
    top = max(len(s) for s in by_answer.values())
    tied = [sum(s) / len(s) for s in by_answer.values() if len(s) == top]
    return {"pass_rate": sum(scores) / len(scores), "majority_score": sum(tied) / len(tied),
            "score_spread": max(scores) - min(scores)}


def sharpening_headroom(probe: pa.Table) -> dict[str, float]:
    """Per question type: mean majority_score - mean pass_rate of its probed questions, at least
    0 (maj@k - mean@k); {} when the questions carry no type."""
    if TYPE_COLUMN not in probe.column_names or probe.num_rows == 0:
        return {}
    grouped = probe.group_by(TYPE_COLUMN).aggregate([("majority_score", "mean"), ("pass_rate", "mean")])
    return {t: max(0.0, m - p) for t, m, p in zip(grouped[TYPE_COLUMN].to_pylist(),
                                                  grouped["majority_score_mean"].to_pylist(),
                                                  grouped["pass_rate_mean"].to_pylist())}


def weight_by_headroom(table: pa.Table, headroom: dict[str, float], seed: int = 0) -> pa.Table:
    """Each row of `table` kept with probability headroom[type] / max(headroom): the type with
    the most headroom whole, a type without any left out, a type the probe did not see kept
    whole. Without types or headroom the table comes back as it is."""
    top = max(headroom.values(), default=0.0)
    if TYPE_COLUMN not in table.column_names or top <= 0:
        return table
    rng = random.Random(seed)
    keep = [rng.random() < headroom.get(t, top) / top for t in table[TYPE_COLUMN].to_pylist()]
    return table.filter(pa.array(keep, pa.bool_()))


def type_counts(table: pa.Table) -> dict[str, int]:
    """Rows per question type (for manifests and logs)."""
    if TYPE_COLUMN not in table.column_names:
        return {}
    return {c["values"]: c["counts"] for c in pc.value_counts(table[TYPE_COLUMN]).to_pylist()}
