"""What a sweep leaves behind: a table of trials sorted by the metric, `best_config.yaml` (a full
config `rlhf train` accepts as is), `trials.png` (the metric per trial over steps) and
`summary.json` (the table as data)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from rlhf.config.tree import dump_config, load_config
from rlhf.config.typed_yaml import get_dotted
from tune.space import plain, trial_config
from tune.trial_plan import planned_steps

DONE, STOPPED, UNFINISHED, ERROR = "done", "stopped early", "unfinished", "error"


@dataclass
class TrialRow:
    trial: str
    params: dict
    status: str
    steps: int  # steps reported
    planned: int  # the last step of a complete trial (train.steps, or <stage>.max_steps)
    last: float | None  # the metric at the last reported step
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, metric)
    error: str = ""


def collect(results, base: dict, metric: str, finished: set[str] | None, trials_dir: Path) -> list[TrialRow]:
    """Rows from a Tune ResultGrid. `finished` holds the ids of trials Tune ended (None: all
    ended); a trial that ended before its last step was stopped by the scheduler."""
    rows = []
    for result in results:
        trial = Path(result.path).name
        params = _values(result.config or {}, trials_dir / trial / "config.yaml")
        history = _history(result.metrics_dataframe, metric)
        planned = planned_steps(trial_config(base, params))
        if result.error is not None:
            status = ERROR
        elif finished is not None and trial not in finished:
            status = UNFINISHED
        else:
            status = DONE if history and history[-1][0] >= planned else STOPPED
        rows.append(TrialRow(trial, params, status, history[-1][0] if history else 0, planned,
                             history[-1][1] if history else None, history,
                             _first_line(result.error) if result.error is not None else ""))
    return rows


def _values(sampled: dict, run_config: Path) -> dict:
    """The trial's values as its run last used them: PBT changes them as it goes, and Tune's
    record of a trial's config can lag behind its last restart."""
    if not run_config.exists():
        return {k: plain(v) for k, v in sampled.items()}
    cfg = load_config(run_config)
    return {k: get_dotted(cfg, k) for k in sampled}


def _history(frame, metric: str) -> list[tuple[int, float]]:
    if frame is None or metric not in frame or "step" not in frame:
        return []
    points = frame[["step", metric]].dropna()
    return [(int(s), float(v)) for s, v in zip(points["step"], points[metric])]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else type(error).__name__


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first by the last reported value; trials without a value go last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.last is None or math.isnan(r.last), sign * (r.last or 0.0)))


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best trial that ran all its steps: a trial stopped early reports a value from an
    earlier step, so it is not comparable. Falls back to any trial with a value."""
    order = [r for r in ranked(rows, mode) if r.last is not None and not math.isnan(r.last)]
    complete = [r for r in order if r.status == DONE]
    return (complete or order or [None])[0]


def table(rows: list[TrialRow], keys: list[str], metric: str, mode: str, best: TrialRow | None) -> Table:
    out = Table(title=f"trials by {metric} ({mode})")
    out.add_column("trial")
    for key in keys:
        out.add_column(key, justify="right")
    out.add_column(metric, justify="right")
    out.add_column("steps", justify="right")
    out.add_column("status")
    for row in ranked(rows, mode):
        mark = " *" if best is not None and row.trial == best.trial else ""
        value = "-" if row.last is None else f"{row.last:.4g}"
        status = f"{row.status}: {row.error}" if row.error else row.status
        out.add_row(row.trial + mark, *[_short(row.params.get(k)) for k in keys], value,
                    f"{row.steps}/{row.planned}", status)
    return out


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_outputs(run_dir: Path, rows: list[TrialRow], base: dict, metric: str, mode: str,
                  best: TrialRow | None) -> Path | None:
    """summary.json always; best_config.yaml and trials.png when some trial reported."""
    summary = {"metric": metric, "mode": mode, "best": best.trial if best else None,
               "trials": [asdict(r) for r in ranked(rows, mode)]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if best is None:
        return None
    dump_config(trial_config(base, best.params), run_dir / "best_config.yaml")
    plot(rows, metric, run_dir / "trials.png", best)
    return run_dir / "best_config.yaml"


def plot(rows: list[TrialRow], metric: str, out: Path, best: TrialRow | None) -> Path:
    """One line per trial over steps; the best trial drawn thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if not row.history:
            continue
        steps, values = zip(*row.history)
        is_best = best is not None and row.trial == best.trial
        label = f"{row.trial} ({row.status})" + (" best" if is_best else "")
        ax.plot(steps, values, marker="o", markersize=3, linewidth=2.5 if is_best else 1.0, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
