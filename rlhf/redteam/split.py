"""Which half of the attack material trains the guard and which half attacks it.

Templates are split by hand in material/attacks.yaml (`guard:` / `redteam:` lists). Public
corpus rows and the project's plain harmful requests are split here, by a hash of the
normalised text, so the split is the same on every machine and never depends on list order.
`assert_disjoint` is the check that no red-team text became a guard training row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

GUARD, REDTEAM = "guard", "redteam"
GUARD_SHARE = 0.5  # of each public source


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def half(text: str, guard_share: float = GUARD_SHARE) -> str:
    """GUARD or REDTEAM for one corpus row."""
    digest = hashlib.sha256(normalise(text).encode("utf-8")).digest()
    return GUARD if int.from_bytes(digest[:8], "big") < guard_share * 2**64 else REDTEAM


def pick(rows: Iterable[str], side: str) -> list[str]:
    """The rows of one side. A row that contains, or is contained in, a row of the guard's half
    (near-duplicates in public corpora) goes to the guard's half, so no attack is half-seen."""
    rows = list(rows)
    guard = [normalise(r) for r in rows if half(r) == GUARD]
    joined = "\n".join(guard)

    def overlaps(row: str) -> bool:
        key = normalise(row)
        return key in joined or any(g in key for g in guard)

    return [r for r in rows if (half(r) == GUARD or overlaps(r)) == (side == GUARD)]


class Overlap(ValueError):
    pass


def assert_disjoint(guard_texts: Iterable[str], attack_texts: Iterable[str], what: str = "red-team set") -> int:
    """Raise Overlap when a guard training text also occurs in `attack_texts` (normalised, and
    as a substring: a red-team payload inside a guard row counts too). Returns the rows checked."""
    guard = [normalise(t) for t in guard_texts]
    joined = "\n".join(guard)
    attacks = {normalise(t) for t in attack_texts if len(normalise(t)) >= 12}
    hits = sorted(a for a in attacks if a in joined)
    if hits:
        raise Overlap(f"{len(hits)} {what} text(s) also occur in the guard's training rows, e.g. {hits[0][:100]!r}")
    return len(guard)
