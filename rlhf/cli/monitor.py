"""`rlhf monitor`: the live version's production numbers against its evaluation baseline, read
from Ray's metrics export of every node (rlhf/lifecycle/monitor.py), with drift flags and plots."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from rlhf.cli.common import fail, out, say
from rlhf.cli.common import load as _load
from rlhf.cli.lifecycle import REGISTRY_OPT
from rlhf.lifecycle import monitor as mon
from rlhf.lifecycle.registry import Registry, RegistryError

ROWS = (("answers", "answers", "{:d}", None), ("guard_block_rate", "guard block rate", "{:.3f}", None),
        ("thumbs", "thumbs feedback", "{:d}", None), ("thumbs_down_rate", "thumbs-down rate", "{:.3f}", None),
        ("mean_answer_tokens", "mean answer tokens", "{:.1f}", "answer_length"),
        ("p50_s", "p50 answer time (s)", "{:.3f}", None), ("p95_s", "p95 answer time (s)", "{:.3f}", None),
        ("ttft_p95_s", "p95 first token (s, streamed)", "{:.3f}", None), ("error_rate", "5xx rate", "{:.4f}", None))


def monitor(overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. monitor.min_answers=50."),
            config: Path | None = typer.Option(None, help="YAML config (the monitor section's bounds and history)."),
            registry: Path = REGISTRY_OPT,
            address: str = typer.Option("auto", help="Ray cluster whose nodes' metrics are read."),
            metrics_url: list[str] = typer.Option([], "--metrics-url", help="Read this Prometheus text instead "
                                                  "of the Ray nodes (repeatable)."),
            plot: Path | None = typer.Option(None, help="PNG of the history over time (default: beside it)."),
            watch: float = typer.Option(0.0, help="Read again every this many seconds (0: once)."),
            count: int = typer.Option(1, help="Readings to take with --watch.")) -> None:
    """Read every replica's numbers per model version, compare the live version with its
    evaluation baseline and the monitor bounds, append to the history and plot it."""
    cfg = _load(config, overrides)
    try:
        live = Registry(registry).live() if registry.is_dir() else None
    except RegistryError as exc:
        fail(str(exc))
    urls = list(metrics_url) or _ray_urls(address)
    for n in range(max(1, count)):
        if n:
            time.sleep(watch)
        try:
            entry = mon.reading(mon.scrape(urls), live, cfg.monitor)
        except ConnectionError as exc:
            fail(str(exc))
        mon.append(cfg.monitor.history, entry)
        _print(entry, cfg.monitor)
    history = mon.load_history(cfg.monitor.history)
    png = mon.plot(history, plot or Path(cfg.monitor.history).with_suffix(".png"), cfg.monitor)
    out.print(f"history: {cfg.monitor.history} ({len(history)} readings); plot: {png}", soft_wrap=True,
              markup=False, highlight=False)


def _ray_urls(address: str) -> list[str]:
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            fail(f"no Ray cluster at {address!r} to read metrics from ({exc}); start `rlhf serve` or pass "
                 "--metrics-url")
    return mon.metrics_urls()


def _print(entry: dict, bounds) -> None:
    live, versions = entry["live"], entry["versions"]
    if not versions:
        say("no answers recorded yet by any replica (ray_rlhf_qa_* series are empty)")
        return
    names = sorted(versions, key=lambda v: (v != live, v))
    table = Table(title=f"production numbers per version (live: {live or 'none'}; all replicas, all nodes)")
    for col in ("", *[f"{v} (live)" if v == live else v for v in names], "live: evaluation", "bound"):
        table.add_column(col)
    limits = {"thumbs_down_rate": bounds.max_thumbs_down_rate, "guard_block_rate": bounds.max_guard_block_rate,
              "p95_s": bounds.max_p95_latency_s, "error_rate": bounds.max_error_rate,
              "mean_answer_tokens": f"x{bounds.answer_length_ratio:g} of evaluation"}
    for key, label, fmt, base_key in ROWS:
        cells = [_fmt(fmt, versions[v][key]) for v in names]
        base = entry["baseline"].get(base_key) if base_key else None
        table.add_row(label, *cells, _fmt("{:.3f}", base), str(limits.get(key, "")))
    out.print(table)
    blocks = versions.get(live, {}).get("guard_blocks") or {}
    if blocks:
        say("guard blocks of the live version by reason: " + ", ".join(f"{r} {n}" for r, n in blocks.items()))
    if entry["drift"]:
        say(f"DRIFT on {live}: " + "; ".join(entry["drift"]))
    elif live in versions:
        n = versions[live]["answers"]
        say(f"no drift on {live}" + ("" if n >= bounds.min_answers else
                                     f" (only {n} answers, fewer than monitor.min_answers={bounds.min_answers})"))


def _fmt(fmt: str, value) -> str:
    if value is None:
        return "-"
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(value)
