"""`rlhf monitor`: the served versions' production numbers against their evaluation baseline.

The endpoint records its numbers per model version through Ray's metrics API (serve/metrics.py,
exported as `ray_rlhf_qa_*`). Each Ray node's metrics agent exports the series of every process
on it, one series per replica, so reading every node and adding the series up gives the whole
cluster: all replicas, all nodes. Counters are cumulative per process; a replica that Serve
replaced starts again from zero, so the numbers cover the replicas alive now.

Each reading is appended to a history file (monitor.history); the plots over time and
`rlhf round --when drift` read it. Drift flags compare a version's numbers with the bounds of the
`monitor` config section once it has given monitor.min_answers answers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

PREFIX = "ray_rlhf_qa_"
# metric -> the label that splits it (besides version); every other label names a process
SPLIT = {"requests": "status", "answers": "outcome", "tokens": "kind", "guard_decisions": "reason",
         "feedback": "kind"}
HISTOGRAMS = ("answer_seconds", "time_to_first_token_seconds")


def metrics_urls() -> list[str]:
    """The metrics export of every alive node of the connected Ray cluster."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes() if n["Alive"]]


def scrape(urls: list[str], timeout: float = 10.0) -> str:
    """The Prometheus text of every URL, joined; an unreachable one is an error that names it."""
    import httpx

    texts = []
    for url in urls:
        try:
            resp = httpx.get(url, timeout=timeout)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"cannot read metrics from {url}: {exc}") from None
        texts.append(resp.text)
    return "\n".join(texts)


def per_version(text: str) -> dict[str, dict]:
    """Sum the endpoint's series over processes and nodes, per version:
    {version: {"requests": {status: n}, "answers": {outcome: n}, "tokens": {kind: n},
    "guard_decisions": {reason: n}, "feedback": {kind: n},
    "answer_seconds": {"buckets": {le: n}, "sum": s, "count": n}, "time_to_first_token_seconds": ...}}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: the same whether a TYPE line came or not
            version = sample.labels.get("version")
            if version is None or not sample.name.startswith(PREFIX):
                continue
            name = sample.name[len(PREFIX):]
            base, _, part = name.rpartition("_")
            if base in HISTOGRAMS and part in ("bucket", "sum", "count"):
                _add_histogram(out.setdefault(version, _empty())[base], part, sample)
            elif part == "total" and base in SPLIT:
                split = out.setdefault(version, _empty())[base]
                key = sample.labels.get(SPLIT[base], "")
                split[key] = split.get(key, 0.0) + sample.value
    return out


def _empty() -> dict:
    return {**{m: {} for m in SPLIT}, **{h: {"buckets": {}, "sum": 0.0, "count": 0.0} for h in HISTOGRAMS}}


def _add_histogram(hist: dict, part: str, sample) -> None:
    if part == "bucket":
        le = float(sample.labels["le"])
        hist["buckets"][le] = hist["buckets"].get(le, 0.0) + sample.value
    else:
        hist[part] += sample.value


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket (as Prometheus'
    histogram_quantile does); None when it holds no observation."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if math.isinf(edge):
                return lower  # beyond the last finite bound: the bound is all that is known
            inside = buckets[edge] - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = edge, buckets[edge]
    return lower


def numbers(rec: dict) -> dict:
    """The rates a person reads, from one version's sums."""
    answers = sum(rec["answers"].values())
    answered = rec["answers"].get("answered", 0.0)
    requests = sum(rec["requests"].values())
    errors = sum(n for status, n in rec["requests"].items() if status.startswith("5"))
    up, down = rec["feedback"].get("thumbs_up", 0.0), rec["feedback"].get("thumbs_down", 0.0)
    blocks = {reason: n for reason, n in rec["guard_decisions"].items() if reason != "ok"}
    return {
        "answers": int(answers), "requests": int(requests),
        "error_rate": errors / requests if requests else None,
        "guard_block_rate": rec["answers"].get("blocked", 0.0) / answers if answers else None,
        "guard_blocks": {r: int(n) for r, n in sorted(blocks.items())},
        "thumbs": int(up + down), "thumbs_down_rate": down / (up + down) if up + down else None,
        "feedback": {k: int(n) for k, n in sorted(rec["feedback"].items())},
        "mean_answer_tokens": rec["tokens"].get("completion", 0.0) / answered if answered else None,
        "p50_s": quantile(rec["answer_seconds"]["buckets"], 0.5),
        "p95_s": quantile(rec["answer_seconds"]["buckets"], 0.95),
        "ttft_p95_s": quantile(rec["time_to_first_token_seconds"]["buckets"], 0.95),
    }


def baseline(version: dict | None) -> dict:
    """What the version's evaluation measured that production can be held to (may be empty)."""
    ev = (version or {}).get("evaluation") or {}
    return {k: ev[k] for k in ("answer_length", "refusal") if ev.get(k) is not None}


def drift(nums: dict, base: dict, bounds) -> list[str]:
    """Flags for the numbers outside `bounds` (the monitor config section); none below min_answers."""
    if nums["answers"] < bounds.min_answers:
        return []
    flags = []
    for key, bound, what in (("thumbs_down_rate", bounds.max_thumbs_down_rate, "thumbs-down rate"),
                             ("guard_block_rate", bounds.max_guard_block_rate, "guard block rate"),
                             ("error_rate", bounds.max_error_rate, "5xx rate"),
                             ("p95_s", bounds.max_p95_latency_s, "p95 answer time (s)")):
        if nums[key] is not None and nums[key] > bound:
            flags.append(f"{what} {nums[key]:.3g} > {bound:g}")
    length, ref = nums["mean_answer_tokens"], base.get("answer_length")
    if length is not None and ref:
        ratio = length / ref
        if not 1 / bounds.answer_length_ratio <= ratio <= bounds.answer_length_ratio:
            flags.append(f"answer length {length:.1f} tokens vs {ref:.1f} in evaluation "
                         f"(x{ratio:.2f}, bound x{bounds.answer_length_ratio:g})")
    return flags


def reading(text: str, live: dict | None, bounds) -> dict:
    """One reading: every version's numbers, the live version's baseline and flags."""
    versions = {v: numbers(rec) for v, rec in sorted(per_version(text).items())}
    name = live["version"] if live else ""
    base = baseline(live)
    flags = drift(versions[name], base, bounds) if name in versions else []
    return {"time": time.time(), "live": name, "baseline": base, "versions": versions, "drift": flags}


def append(history: str | Path, entry: dict) -> None:
    path = Path(history)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def load_history(history: str | Path) -> list[dict]:
    path = Path(history)
    if not path.is_file():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not a JSON reading (a line written by `rlhf monitor`)") from None
    return entries


PANELS = (("thumbs_down_rate", "thumbs-down rate", "max_thumbs_down_rate"),
          ("guard_block_rate", "guard block rate", "max_guard_block_rate"),
          ("mean_answer_tokens", "mean answer tokens", None),
          ("p95_s", "p95 answer time (s)", "max_p95_latency_s"))


def plot(entries: list[dict], out: str | Path, bounds) -> Path:
    """The history as four panels over time, one line per version, bounds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    start = entries[0]["time"] if entries else 0.0
    versions = sorted({v for e in entries for v in e["versions"]})
    for ax, (key, title, bound) in zip(axes.flat, PANELS):
        for v in versions:
            pts = [((e["time"] - start) / 60, e["versions"][v][key]) for e in entries
                   if v in e["versions"] and e["versions"][v][key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=v)
        if bound:
            ax.axhline(getattr(bounds, bound), ls="--", color="grey", lw=1)
        ax.set_title(title, fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel("minutes since the first reading")
    if axes[0][0].get_lines():
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
