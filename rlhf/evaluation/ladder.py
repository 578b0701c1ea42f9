"""The ladder: every stage's model on the same held-out questions, each rung against the one
below it (paired bootstrap over the questions), overall and per question type.

    base -> sft -> dpo (when run) -> rl

A rung's `diff_vs_previous` is its accuracy minus the previous rung's on the same questions,
with a 95% paired-bootstrap interval; a rung whose interval lies above zero measurably added
to the one before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rlhf.config.tree import Config
from rlhf.evaluation.metrics import bootstrap_ci, question_metrics


def question_type(row: dict) -> str:
    """open, yes_no or choice, from the row's options or its closing instruction."""
    text = row["question"].rstrip()
    if row.get("choices") or "Options:" in text:
        return "choice"
    if text.endswith("Answer yes or no.") or str(row.get("reference", "")).strip().lower() in ("yes", "no"):
        return "yes_no"
    return "open"


def accuracies(rows: Sequence[dict], answers: Sequence[str]) -> list[float]:
    return [float(question_metrics(row, answer)["accuracy"]) for row, answer in zip(rows, answers)]


def _rung(stage: str, model: str, acc: list[float], prev: list[float] | None, n_boot: int, seed: int) -> dict:
    mean = sum(acc) / len(acc) if acc else float("nan")
    entry = {"stage": stage, "model": model, "accuracy": mean, "n": len(acc), "diff_vs_previous": None,
             "diff_vs_previous_ci95": None}
    if prev is not None and acc:
        diff, lo, hi = bootstrap_ci(acc, prev, n=n_boot, seed=seed)
        entry["diff_vs_previous"], entry["diff_vs_previous_ci95"] = diff, [lo, hi]
    return entry


COLLAPSE_SHARE = 0.9
"""A rung whose most common answer to one question type covers this share of those questions,
well above the references' own, is flagged in the report: one answer for all, not reading."""


def _normal(answer: str) -> str:
    return " ".join(answer.lower().replace(".", " ").split())


def answer_spread(answers: Sequence[str], references: Sequence[str]) -> dict:
    """The most common answer (case and full stops ignored), the share of the questions it is
    given to, and the share of the most common reference among the same questions."""
    top, count = Counter(_normal(a) for a in answers).most_common(1)[0]
    ref_count = Counter(_normal(str(r)) for r in references).most_common(1)[0][1]
    return {"top": top, "share": count / len(answers), "reference_share": ref_count / len(references)}


def collapsed(spread: dict) -> bool:
    return spread["share"] >= COLLAPSE_SHARE and spread["share"] - spread["reference_share"] >= 0.25


def build_ladder(rungs: Sequence[tuple[str, str]], rows: Sequence[dict], answers: dict[str, Sequence[str]],
                 n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """`rungs`: (stage, model path) in order; `answers`: model path -> its answer to each row.
    -> one entry per rung: stage, model, accuracy, n, diff_vs_previous(+ci95), by_type, and
    answer_spread (per type: the most common answer and its share, see `answer_spread`)."""
    types = [question_type(r) for r in rows]
    ladder, prev = [], None
    for stage, model in rungs:
        acc = accuracies(rows, answers[model])
        entry = _rung(stage, model, acc, prev, n_boot, seed)
        entry["by_type"], entry["answer_spread"] = {}, {}
        for t in sorted(set(types)):
            pick = [i for i, x in enumerate(types) if x == t]
            entry["answer_spread"][t] = answer_spread([answers[model][i] for i in pick],
                                                      [rows[i]["reference"] for i in pick])
            sub = _rung(stage, model, [acc[i] for i in pick], [prev[i] for i in pick] if prev else None,
                        n_boot, seed)
            entry["by_type"][t] = {k: sub[k] for k in ("accuracy", "n", "diff_vs_previous", "diff_vs_previous_ci95")}
        ladder.append(entry)
        prev = acc
    return ladder


def ladder_answers(rungs: Sequence[tuple[str, str]], rows: Sequence[dict], cfg: Config,
                   known: dict[str, Sequence[str]]) -> dict[str, Sequence[str]]:
    """Greedy answers of every rung's model; models in `known` (already evaluated) are not rerun."""
    from rlhf.evaluation.heldout import eval_question, generate_answers

    questions = [eval_question(r) for r in rows]
    answers = dict(known)
    for _, model in rungs:
        if model not in answers:
            answers[model] = generate_answers(model, questions, cfg).answers
    return answers


def ladder_markdown(ladder: Sequence[dict], plot: str = "ladder.png") -> str:
    lines = ["## Ladder: every stage on the same held-out questions", "",
             "| stage | accuracy | n | vs previous | 95% CI | " + " | ".join(ladder[0]["by_type"]) + " |",
             "|---|---|---|---|---|" + "---|" * len(ladder[0]["by_type"])]
    for r in ladder:
        ci = r["diff_vs_previous_ci95"]
        diff = "-" if r["diff_vs_previous"] is None else f"{r['diff_vs_previous']:+.3f}"
        cells = [f"{t['accuracy']:.3f} (n={t['n']})" for t in r["by_type"].values()]
        lines.append(f"| {r['stage']} | {r['accuracy']:.3f} | {r['n']} | {diff} | "
                     f"{'-' if ci is None else f'[{ci[0]:+.3f}, {ci[1]:+.3f}]'} | " + " | ".join(cells) + " |")
    for r in ladder:
        for t, spread in r.get("answer_spread", {}).items():
            if collapsed(spread):
                lines += ["", f"**{r['stage']} gives one answer, '{spread['top']}', to {spread['share']:.0%} of its "
                              f"{t} questions** (the most common reference answer covers "
                              f"{spread['reference_share']:.0%}): its score there comes from that answer, not from "
                              "reading the question."]
    return "\n".join(lines + ["", f"![ladder]({plot})", ""])


def plot_ladder(ladder: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(ladder[0]["by_type"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / (len(types) + 1)
    xs = range(len(ladder))
    for k, name in enumerate(["all", *types]):
        values = [r["accuracy"] if name == "all" else r["by_type"][name]["accuracy"] for r in ladder]
        ax.bar([x + k * width for x in xs], values, width, label=name)
    ax.set_xticks([x + width * len(types) / 2 for x in xs], [r["stage"] for r in ladder])
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"every stage on the same {ladder[0]['n']} held-out questions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
