"""A soak of `rlhf serve`: many clients for a long time, against a short run at the same load.

    .venv/bin/python bench/serve_soak.py [--model tiny] [--clients 64] [--minutes 10]
                                         [--quiet-minutes 1] [--max-tokens 16]

One `rlhf serve` on a free loopback port (guard rules on, every answer written to its SQLite
feedback DB, as shipped). First a quiet run: the same clients for --quiet-minutes; then the soak:
--clients clients for --minutes, each sending chat completions back to back and rating every
fifth answer through /feedback. Reported per phase: requests, 5xx and other failures, p50/p99
latency, throughput; the replica's resident memory (RSS of the replica process and its engine
children) at the soak's start and end, sampled every 10 s. Targets: zero 5xx, soak p99 within
2x of the quiet run's, memory flat. Writes bench/results/serve_soak.json and a plot of latency
and memory against time (serve_soak.png).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine, write_result  # noqa: E402
from bench.serve import MODEL_NAME, Server, free_port, percentile, question  # noqa: E402


def replica_rss_mib() -> float:
    """Resident memory of the QA replica's process tree (the replica and its engine workers)."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
            procs[int(proc.name)] = (int(stat[1]), int(stat[21]) * 4096 / 2**20, b"ServeReplica" in cmd)
        except (OSError, IndexError, ValueError):
            continue
    roots = [pid for pid, (_, _, replica) in procs.items() if replica]
    tree, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in procs.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(procs[pid][1] for pid in tree)


async def phase(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` clients sending back to back for `seconds`; every fifth answer gets a rating."""
    import aiohttp

    outcomes: list[tuple[float, float, object]] = []  # (start, latency, status)
    ratings = {"acked": 0, "failed": 0}
    deadline = time.time() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def client(c: int) -> None:
            i = 0
            while time.time() < deadline:
                body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": question(c * 100_000 + i)}],
                        "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
                started = time.time()
                try:
                    async with session.post(url + "/v1/chat/completions", json=body) as resp:
                        data = await resp.json(content_type=None)
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    data, status = {}, type(exc).__name__
                outcomes.append((started, time.time() - started, status))
                if status == 200 and i % 5 == 0:
                    async with session.post(url + "/feedback", json={"id": data["id"], "rating": 4}) as resp:
                        ratings["acked" if resp.status == 200 else "failed"] += 1
                i += 1

        await asyncio.gather(*(client(c) for c in range(clients)))
    return {"outcomes": outcomes, "ratings": ratings, "seconds": seconds}


def summary(result: dict) -> dict:
    out = result["outcomes"]
    ok = [lat for _, lat, s in out if s == 200]
    return {"requests": len(out), "ok": len(ok), "5xx": sum(isinstance(s, int) and s >= 500 for _, _, s in out),
            "other_failures": sum(s != 200 and not (isinstance(s, int) and s >= 500) for _, _, s in out),
            "p50_s": percentile(ok, 50), "p99_s": percentile(ok, 99),
            "requests_per_s": len(ok) / result["seconds"], **{f"ratings_{k}": v for k, v in result["ratings"].items()}}


def sample_memory(stop: threading.Event, samples: list, started: float) -> None:
    while not stop.wait(10):
        samples.append((time.time() - started, replica_rss_mib()))


def plot(soak: dict, memory: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(s for s, _, _ in soak["outcomes"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot([s - t0 for s, _, st in soak["outcomes"] if st == 200],
             [lat for _, lat, st in soak["outcomes"] if st == 200], ",", alpha=0.5)
    ax1.set_ylabel("latency (s)")
    ax1.set_title("rlhf serve soak: latency of each request, replica memory")
    ax2.plot([t for t, _ in memory], [m for _, m in memory], marker="o")
    ax2.set_ylabel("replica RSS (MiB)")
    ax2.set_xlabel("seconds into the soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quiet-minutes", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    console = Console()
    import os

    log_dir = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "RLHF_API_KEYS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    server = Server("rlhf serve", [str(Path(sys.executable).parent / "rlhf"), "serve", "--model", args.model,
                                   "--port", str(port), f"serve.feedback_db={log_dir / 'feedback.sqlite'}",
                                   f"serve.model_name={MODEL_NAME}", "serve.max_ongoing_requests=256"],
                    port, "/healthz", log_dir, env)
    info = machine()
    try:
        console.print(f"rlhf serve ready in {server.wait_ready(600):.0f} s; quiet run: {args.clients} clients, "
                      f"{args.quiet_minutes:g} min")
        quiet = asyncio.run(phase(server.url, args.clients, args.quiet_minutes * 60, args.max_tokens))
        console.print(f"soak: {args.clients} clients, {args.minutes:g} min")
        memory, stop = [(0.0, replica_rss_mib())], threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(stop, memory, time.time()), daemon=True)
        sampler.start()
        soak = asyncio.run(phase(server.url, args.clients, args.minutes * 60, args.max_tokens))
        stop.set()
        sampler.join()
        memory.append((args.minutes * 60, replica_rss_mib()))
    finally:
        server.stop()
    rows = {"quiet": summary(quiet), "soak": summary(soak)}
    result = {"machine": info, "args": vars(args), **rows,
              "p99_ratio": rows["soak"]["p99_s"] / rows["quiet"]["p99_s"],
              "rss_mib_start": memory[0][1], "rss_mib_end": memory[-1][1], "rss_mib_max": max(m for _, m in memory),
              "memory": memory}
    plot(soak, memory, ROOT / "bench" / "results" / "serve_soak.png")
    table = Table(title=f"rlhf serve soak ({info['cpu']}, {info['cores']} cores): {args.clients} clients")
    for col in ("phase", "requests", "5xx", "other failures", "p50 s", "p99 s", "req/s", "ratings acked"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, str(r["requests"]), str(r["5xx"]), str(r["other_failures"]), f"{r['p50_s']:.3f}",
                      f"{r['p99_s']:.3f}", f"{r['requests_per_s']:.1f}", str(r["ratings_acked"]))
    console.print(table)
    console.print(f"p99 soak / quiet: {result['p99_ratio']:.2f} (target <= 2); replica RSS "
                  f"{result['rss_mib_start']:.0f} -> {result['rss_mib_end']:.0f} MiB (max {result['rss_mib_max']:.0f})")
    console.print(f"wrote {write_result('serve_soak', result)}")


if __name__ == "__main__":
    main()
