"""report.md of a review round: the decision first, then the numbers behind it.

Sections: what the round trained on, the promotion decision, the comparison with the promoted
model (and with the previous round when that one was not promoted), reviewer agreement, and
every round so far. The numbers come from report.json (rlhf/human/rounds.py); nothing is computed here.
"""

from __future__ import annotations

from rlhf.evaluation.report import LABELS, _ci, _num


def _comparison(report: dict, other: dict, title: str) -> list[str]:
    r = other["round"]
    lines = [f"## {title}", "", f"| metric | round {r} | round {report['round']} | difference [95% CI] |",
             "|---|---|---|---|"]
    for name, label in LABELS.items():
        d = other["diff"].get(name)
        if d is None:
            continue
        new, old = report["metrics"].get(name), other["metrics"].get(name)
        lines.append(f"| {label} | {_num(old)} | {_num(new)} | {d['mean']:+.3f} {_ci(d['ci95'])} |")
    lines += [f"| win rate of round {report['round']} (judge: {other['win_judge']}) | | {_num(other['win_rate'])} | "
              f"{_ci(other['win_rate_ci95'])} |", ""]
    return lines


def _agreement(agreement: dict) -> list[str]:
    lines = ["## Reviewer agreement", "",
             f"{agreement['reviews']} reviews by {len(agreement['reviewers'])} reviewer(s); items reviewed "
             "more than once count below.", "",
             "| what | items | pairs | exact | within 1 | mean abs diff | Krippendorff's alpha |",
             "|---|---|---|---|---|---|---|"]
    rate = agreement["rate"]
    for name, a in [*rate["aspects"].items(), ("overall (mean of aspects)", rate["overall"])]:
        lines.append(f"| rating: {name} | {a['items']} | {a['pairs']} | {_num(a['exact'])} | {_num(a['within_1'])} | "
                     f"{_num(a['mean_abs_diff'])} | {_num(a['alpha'])} |")
    c = agreement["compare"]
    lines += [f"| better of two | {c['items']} | {c['pairs']} | {_num(c['exact'])} | | | {_num(c['alpha'])} |", ""]
    return lines


def _history(history: list[dict], metric: str) -> list[str]:
    lines = ["## Rounds so far", "", f"| round | {metric} | promoted | model |", "|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['round']} | {_num(h['metrics'].get(metric))} | {'yes' if h['promoted'] else 'no'} | "
                     f"`{h['model']}` |")
    return lines + [""]


def _training(report: dict) -> str:
    t, rows = report["training"], report["training"]["rows"]
    what = "DPO" if t["method"] == "dpo" else "a reward model, then RL against it,"
    return (f"- trained from round {report['base_round']} (`{t['base_model']}`) with {what} on {t['pairs']} "
            f"training pairs (export: {rows['preferences']} preference pairs, {rows['ratings']} ratings, "
            f"{rows['corrections']} corrections)")


def markdown(report: dict, history: list[dict]) -> str:
    if report["round"] == 0:
        lines = ["# Review round 0: the starting model", "", f"- model: `{report['model']}`",
                 f"- validation: `{report['validation']['data']}` ({report['n']} questions)", ""]
        return "\n".join(lines + _history(history, report["metric"]))
    verdict = "promoted" if report["promoted"] else "kept, NOT promoted"
    v = report["validation"]
    lines = [f"# Review round {report['round']}: {verdict}", "", f"- model: `{report['model']}`", _training(report),
             f"- validation: `{v['data']}` ({report['n']} questions, greedy, {v['max_new_tokens']} new tokens)",
             f"- decision: {report['decision']}: {verdict}"]
    if report["target"] is not None:
        state = "reached: the loop can stop" if report["target_reached"] else "not reached yet"
        lines.append(f"- target {report['metric']} {report['target']:g}: {state}")
    lines.append("")
    lines += _comparison(report, report["vs_promoted"], f"Compared with round {report['base_round']} (promoted)")
    if report["vs_previous"] is not None:
        lines += _comparison(report, report["vs_previous"],
                             f"Compared with round {report['previous_round']} (the previous round, not promoted)")
    lines += _agreement(report["agreement"]) + _history(history, report["metric"])
    lines.append("Every validation answer with its metrics is in `eval/answers.jsonl`; the training data in `data/`.")
    return "\n".join(lines) + "\n"
