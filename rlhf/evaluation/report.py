"""Writing an evaluation report: report.json, answers.jsonl, report.md and PNG plots.

`summary_rows` is the one table of numbers; the Markdown report and the CLI both print it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rlhf.evaluation.metrics import ASPECTS

LABELS = {
    "accuracy": "accuracy",
    "exact_match": "exact match (open-ended)",
    "token_f1": "token F1 (open-ended)",
    "choice_accuracy": "choice accuracy (closed-ended)",
    "rm_score": "reward-model score (helpfulness)",
    "relevance": "relevance: answer-question similarity (MiniLM)",
    "reference_similarity": "answer-reference similarity (MiniLM)",
    "logprob": "mean token logprob (coherence)",
    "perplexity_base": "perplexity under the base model (coherence)",
    "length": "answer length (tokens)",
    "repetition": "repeated 4-gram share",
    "refusal": "refusal rate",
    **{f"judge_{aspect}": f"judge: {aspect} (1-5)" for aspect in ASPECTS},
}
"""Metric names in report order, with what they stand for."""
RATES = ("accuracy", "exact_match", "token_f1", "choice_accuracy", "repetition", "refusal")
"""Metrics on a 0..1 scale: these share one bar chart."""
EXAMPLES = 5


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else ""


def summary_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the main table: each metric with its CI, and with a baseline the
    baseline's value and the difference with its paired CI; then win rate and KL."""
    base = result.get("baseline")
    header = (["metric", "model", "baseline", "diff (model - baseline) [95% CI]"] if base
              else ["metric", "value", "95% CI"])
    rows = []
    for name, label in LABELS.items():
        if result.get(name) is None and not (base and base.get(name) is not None):
            continue
        if base:
            d = result["diff"].get(name)
            rows.append([label, _num(result.get(name)), _num(base.get(name)),
                         f"{_num(d['mean'])} {_ci(d['ci95'])}" if d else "-"])
        else:
            rows.append([label, _num(result[name]), _ci(result["ci95"].get(name))])
    if base:
        rows.append([f"win rate (judge: {result['win_judge']})", _num(result["win_rate"]), "",
                     _ci(result["win_rate_ci95"])])
        rows.append(["KL to baseline (k1, nats per answer)", _num(result["kl_to_baseline"]), "",
                     _ci(result["kl_to_baseline_ci95"]) or "different vocabularies"])
    rows.append(["questions", str(result["n"]), str(base["n"]) if base else "", ""][: len(header)])
    return header, rows


def clean_json(value):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def _human_lines(result: dict) -> list[str]:
    """Reviewers' ratings of the model's production answers beside the judge's on held-out ones."""
    human = result.get("human")
    if not human:
        return []
    lines = ["", f"### Human reviewers beside the automatic ratings (`{human['model']}`)", "",
             f"{human['reviews']} reviews of {human['answers']} production answers (other questions than "
             "the held-out ones); the judge rated the held-out answers.", "",
             "| aspect (1-5) | human reviewers | judge |", "|---|---|---|"]
    for aspect in ASPECTS:
        lines.append(f"| {aspect} | {_num(human[aspect])} | {_num(result.get(f'judge_{aspect}'))} |")
    return lines


def _markdown(result: dict, model_q: Sequence[dict], base_q: Sequence[dict] | None) -> str:
    header, rows = summary_rows(result)
    data = result["data"]
    lines = ["# Evaluation report", "",
             f"- model: `{result['model']}`"]
    if result.get("baseline"):
        lines.append(f"- baseline: `{result['baseline']['model']}`")
    lines += [f"- data: `{data['source']}` ({data['evaluated']} questions evaluated; "
              f"quarantined rows: {data['quarantined']}, rows without a reference: {data['skipped_no_reference']})",
              f"- greedy answers, at most {result['max_new_tokens']} new tokens; "
              f"95% intervals from {result['bootstrap']} bootstrap resamples over questions"
              + (" (paired for differences)" if result.get("baseline") else "")]
    if result.get("judge"):
        j = result["judge"]
        lines.append(f"- judge: `{j['model']}` at {j['url']}, {j['judged']} answers rated on all four aspects, "
                     f"{j['unparsed']} replies without the four ratings (left out of its means)")
    lines += ["",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += _human_lines(result)
    lines += ["", "![metrics](metrics.png)", "", "![answer lengths](lengths.png)", "", "## Examples", ""]
    for i, q in enumerate(model_q[:EXAMPLES]):
        lines += [f"**Q{i + 1}.** {_short(q['question'])}", "", f"- reference: {_short(q['reference'])}",
                  f"- model: {_short(q['answer'])} (accuracy {_num(q['accuracy'])})"]
        if base_q is not None:
            lines.append(f"- baseline: {_short(base_q[i]['answer'])} (accuracy {_num(base_q[i]['accuracy'])})")
        lines.append("")
    lines.append("Every answer with its metrics is in `answers.jsonl`.")
    return "\n".join(lines) + "\n"


def _short(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " ..."


def _plots(result: dict, model_q: Sequence[dict], base_q: Sequence[dict] | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [("model", result)] + ([("baseline", result["baseline"])] if base_q is not None else [])
    names = [m for m in RATES if any(side.get(m) is not None for _, side in sides)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    width = 0.8 / len(sides)
    for k, (label, side) in enumerate(sides):
        xs = [i + (k - (len(sides) - 1) / 2) * width for i in range(len(names))]
        means = [side.get(m) or 0.0 for m in names]
        cis = [side["ci95"].get(m, [side.get(m) or 0.0] * 2) for m in names]
        err = [[max(0.0, v - c[0]) for v, c in zip(means, cis)], [max(0.0, c[1] - v) for v, c in zip(means, cis)]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(names)), [LABELS[m].split(" (")[0] for m in names], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Held-out metrics (n={result['n']}, 95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    sets = [("model", model_q)] + ([("baseline", base_q)] if base_q is not None else [])
    top = max([q["length"] for _, qs in sets for q in qs] + [1])
    bins = min(30, top + 1)
    for label, qs in sets:
        ax.hist([q["length"] for q in qs], bins=bins, range=(0, top + 1), alpha=0.6, label=label)
    ax.set_xlabel("answer length (tokens)")
    ax.set_ylabel("questions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lengths.png", dpi=100)
    plt.close(fig)


def write_report(result: dict, model_q: Sequence[dict], base_q: Sequence[dict] | None,
                 out_dir: str | Path) -> dict:
    """Write every file into `out_dir`; sets and returns result["files"] (name -> path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: str((out / name).resolve()) for name in
             ("report.json", "report.md", "answers.jsonl", "metrics.png", "lengths.png")}
    result["files"] = files
    with open(out / "answers.jsonl", "w") as f:
        for i, q in enumerate(model_q):
            row = dict(q)
            if base_q is not None:
                shared = ("question", "reference", "choices")
                row["baseline"] = {k: v for k, v in base_q[i].items() if k not in shared}
            f.write(json.dumps(clean_json(row), ensure_ascii=False) + "\n")
    _plots(result, model_q, base_q, out)
    (out / "report.md").write_text(_markdown(result, model_q, base_q))
    text = json.dumps(clean_json(result), indent=2, ensure_ascii=False, allow_nan=False)
    (out / "report.json").write_text(text + "\n")
    return files
