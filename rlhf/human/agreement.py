"""How far reviewers agree when several label the same item: pairwise agreement and
Krippendorff's alpha.

A review queue gives items different numbers of reviews (1..n) from different subsets of
reviewers. Krippendorff's alpha handles that: alpha = 1 - D_o / D_e, the disagreement observed
within items over the disagreement expected between any two labels of the whole set. 1 is
perfect agreement, 0 is what chance gives, below 0 is systematic disagreement. The interval
distance (squared difference) fits 1-5 ratings, the nominal one (same or not) fits "which of two
answers is better". Items with a single label carry no information about agreement and are left
out. Pairwise numbers (share of reviewer pairs that agree exactly or within one point, mean
absolute difference) are easier to read and are reported beside alpha.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Sequence


def interval(a: float, b: float) -> float:
    return float(a - b) ** 2


def nominal(a: Hashable, b: Hashable) -> float:
    return float(a != b)


DISTANCES = {"interval": interval, "nominal": nominal}


def krippendorff_alpha(units: Sequence[Sequence], metric: str = "interval") -> float | None:
    """Alpha over `units` (the labels each item got). None when it is undefined: fewer than two
    pairable labels, or no variation at all in the labels (nothing to agree or disagree on)."""
    delta = DISTANCES[metric]
    pairable = [list(u) for u in units if len(u) >= 2]
    counts = Counter(v for u in pairable for v in u)
    n = sum(counts.values())
    if n < 2:
        return None
    observed = sum(sum(delta(a, b) for a, b in itertools.permutations(u, 2)) / (len(u) - 1)
                   for u in pairable) / n
    expected = sum(counts[c] * counts[k] * delta(c, k) for c, k in itertools.permutations(counts, 2))
    expected /= n * (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def pairwise(units: Sequence[Sequence], numeric: bool = True) -> dict:
    """Every unordered pair of labels within an item: how many, the share that agree exactly,
    and for numbers also the share within one point and the mean absolute difference."""
    pairs = [(a, b) for u in units for a, b in itertools.combinations(u, 2)]
    out: dict = {"items": sum(len(u) >= 2 for u in units), "pairs": len(pairs)}
    if not pairs:
        out.update({"exact": None, **({"within_1": None, "mean_abs_diff": None} if numeric else {})})
        return out
    out["exact"] = sum(a == b for a, b in pairs) / len(pairs)
    if numeric:
        out["within_1"] = sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs)
        out["mean_abs_diff"] = sum(abs(a - b) for a, b in pairs) / len(pairs)
    return out
