"""When a round is due: `rlhf round --when "feedback>=50,thumbs_down>=10"` runs only when one of
its conditions holds, counted since the last finished round, so a scheduler can call it hourly.

Counts (rows in the feedback database newer than the last round's report):
  feedback      every feedback row (ratings, thumbs, preferences, corrections)
  thumbs_down   thumbs-down rows
  reviews       reviews submitted on the review page
and `drift`: the last `rlhf monitor` reading since the last round flagged the live version
(monitor.history; rlhf/lifecycle/monitor.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhf.config.typed_yaml import ConfigError

COUNTS = {
    "feedback": "SELECT COUNT(*) AS n FROM feedback WHERE created > ?",
    "thumbs_down": "SELECT COUNT(*) AS n FROM feedback WHERE created > ? AND kind = 'thumbs' AND thumbs = 'down'",
    "reviews": "SELECT COUNT(*) AS n FROM reviews WHERE created > ?",
}
CONDITION = re.compile(r"^\s*([a-z_]+)\s*>=\s*(\d+)\s*$")


def parse_when(spec: str) -> list[tuple[str, int]]:
    """'feedback>=50, drift' -> [('feedback', 50), ('drift', 1)] (any one makes it due)."""
    conditions = []
    for part in spec.split(","):
        if part.strip() == "drift":
            conditions.append(("drift", 1))
            continue
        m = CONDITION.match(part)
        if not m or m.group(1) not in COUNTS:
            raise ConfigError(f"--when: cannot read {part.strip()!r}; expected COUNT>=N with COUNT one of "
                              f"{', '.join(COUNTS)}, or drift (several joined by commas: any one makes the "
                              "round due)")
        conditions.append((m.group(1), int(m.group(2))))
    return conditions


def drift_flags(history: str | Path, since: float) -> list[str]:
    """The drift flags of the last monitor reading taken after `since` (none: no reading)."""
    from rlhf.lifecycle.monitor import load_history

    entries = [e for e in load_history(history) if e["time"] > since] if history else []
    return entries[-1]["drift"] if entries else []


def last_round_time(run_dir: str | Path) -> float:
    """When the last round finished (its report.json was written); 0 before any round."""
    reports = sorted(Path(run_dir).glob("round-*/report.json"))
    return max((p.stat().st_mtime for p in reports), default=0.0)


def due(spec: str, store, run_dir: str | Path, history: str | Path = "") -> tuple[bool, str, dict[str, int]]:
    """(due?, why, the counts) for `spec` against a FeedbackStore (and the monitor history for
    `drift`) since the last round."""
    since = last_round_time(run_dir)
    conditions = parse_when(spec)
    flags = drift_flags(history, since)
    counts = {name: len(flags) if name == "drift" else store.read(COUNTS[name], (since,))[0]["n"]
              for name, _ in conditions}
    met = [f"{name} {counts[name]} >= {n}" for name, n in conditions if counts[name] >= n]
    unmet = [f"{name} {counts[name]} < {n}" for name, n in conditions if counts[name] < n]
    return bool(met), ("; ".join(met) if met else "; ".join(unmet)) + " since the last round", counts
