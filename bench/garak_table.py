"""garak's verdicts per probe beside ours on the same recorded answers.

    python bench/garak_table.py REPORT.jsonl

garak's `passed/total` comes from its own eval rows. "refused (ours)" re-reads each recorded
answer with rlhf.redteam.detectors.refused, the detector behind our harmful and jailbreak
suites. For the injection and encoding probes garak's own trigger detectors decide; there the
refusal share is only for comparison."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from rlhf.redteam.detectors import Response, refused


def main(path: str) -> None:
    evals, answers = {}, defaultdict(list)
    for line in open(path):
        row = json.loads(line)
        if row.get("entry_type") == "eval":
            evals[(row["probe"], row["detector"])] = (row["passed"], row["total_evaluated"])
        elif row.get("entry_type") == "attempt" and row.get("status") == 2:
            out = row["outputs"][0]
            text = out.get("text") if isinstance(out, dict) else out
            answers[row["probe_classname"]].append(text or "")
    table = Table(title=f"garak 0.17.1 against rlhf serve (SmolLM2, guardrails on): {path}")
    for col in ("probe", "garak detector", "garak: passed", "garak: attack success", "refused (ours)"):
        table.add_column(col, justify="left" if col in ("probe", "garak detector") else "right")
    for (probe, detector), (passed, total) in sorted(evals.items()):
        texts = answers.get(probe, [])
        ours = sum(refused(Response(t))[0] for t in texts)
        table.add_row(probe, detector, f"{passed}/{total}", f"{(total - passed) / total:.1%}",
                      f"{ours}/{len(texts)} ({ours / max(1, len(texts)):.1%})")
    Console().print(table)


if __name__ == "__main__":
    main(sys.argv[1])
