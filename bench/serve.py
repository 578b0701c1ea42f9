"""Throughput and latency of `rlhf serve` against vLLM's own OpenAI server, same model, one run.

    .venv/bin/python bench/serve.py [--model tiny|smollm2|PATH] [--concurrency 16 64]
                                    [--requests-per-client 4] [--max-tokens 64] [--rounds 2]

Three servers run at once (each on its own free loopback port) and take turns: for every round
and concurrency level each gets the same burst of chat completions, in alternating order, so
drifting load from other work on the machine hits all alike. The servers:
- `rlhf serve`: the QA endpoint as shipped (Ray Serve proxy -> replica -> vLLM AsyncLLM);
- `vllm serve`: vLLM's OpenAI server with its defaults (the reference for the ratios);
- `vllm serve, in-process worker`: the same server with the engine settings a replica uses
  (VLLM_ENABLE_V1_MULTIPROCESSING=0, OMP_NUM_THREADS=1), so `rlhf serve` against this row is
  Ray Serve's own cost;
- `ray.serve.llm`: Ray Serve's own LLM stack (`build_openai_app`, an `LLMServer` replica behind
  its OpenAI ingress; bench/serve_llm_app.py), stock, without guardrails or feedback capture:
  what the QA endpoint would start from were it built on that stack;
- `rlhf serve, guard rules only`: the QA endpoint without its input classifier
  (`serve.input_guard=""`), to price the classifier.
`--servers` picks some of them (default: all but the last; `vllm serve` always runs: it is the
reference). Every request asks for exactly --max-tokens tokens (`ignore_eos`), non-streamed; throughput is completion
tokens per second of wall time, latency is per request. `rlhf serve` runs as shipped: guard
rules on, every answer and guard decision written to its SQLite feedback DB.

Prints a table with machine details and writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL_NAME = "rlhf-qa"
SAME_ENGINE = "vllm serve, in-process worker"
SERVE_LLM = "ray.serve.llm"
RULES_ONLY = "rlhf serve, guard rules only"
SERVERS = ("rlhf serve", RULES_ONLY, "vllm serve", SAME_ENGINE, SERVE_LLM)
QUESTIONS = ["What is {i} plus {j}?", "Name a city near river number {i}.", "How many days are in {i} weeks?",
             "Explain in one sentence why {i} is {j} less than {k}."]


def machine() -> dict:
    import ray
    import torch
    import vllm

    from bench.common import cpu_flags, cpu_model, memory_gib

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
            "python": platform.python_version(), "ray": ray.__version__, "vllm": vllm.__version__,
            "torch": torch.__version__, "load_average_start": [round(x, 1) for x in os.getloadavg()]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess with its log file; stopped with SIGINT (Ctrl-C), then killed."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, log_dir: Path, env: dict):
        self.name, self.port, self.health = name, port, health
        self.log = log_dir / f"{name.replace(' ', '_').replace(',', '')}.log"
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float) -> float:
        import urllib.request

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=5) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_servers(model: str, max_len: int, log_dir: Path, names: list[str]) -> list[Server]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "RLHF_API_KEYS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    bin_dir = Path(sys.executable).parent
    rlhf_port, rules_port, vllm_port, same_port, llm_port = (free_port() for _ in range(5))

    def rlhf_cmd(port: int, *extra: str) -> list[str]:
        return [str(bin_dir / "rlhf"), "serve", "--model", model, "--port", str(port),
                f"serve.feedback_db={log_dir / f'feedback-{port}.sqlite'}", f"serve.max_model_len={max_len}",
                f"serve.model_name={MODEL_NAME}", *extra]

    def vllm_cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
                "--host", "127.0.0.1", "--served-model-name", MODEL_NAME, "--max-model-len", str(max_len),
                "--enforce-eager", "--dtype", "float32", "--seed", "0"]

    starts = {
        "rlhf serve": lambda: Server("rlhf serve", rlhf_cmd(rlhf_port), rlhf_port, "/healthz", log_dir, env),
        RULES_ONLY: lambda: Server(RULES_ONLY, rlhf_cmd(rules_port, "serve.input_guard="), rules_port, "/healthz",
                                   log_dir, env),
        "vllm serve": lambda: Server("vllm serve", vllm_cmd(vllm_port), vllm_port, "/health", log_dir, env),
        SAME_ENGINE: lambda: Server(SAME_ENGINE, vllm_cmd(same_port), same_port, "/health", log_dir,
                                    {**env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}),
        SERVE_LLM: lambda: Server(SERVE_LLM, [sys.executable, str(ROOT / "bench" / "serve_llm_app.py"), model,
                                              str(llm_port), MODEL_NAME, str(max_len)], llm_port, "/v1/models",
                                  log_dir, env),
    }
    return [start() for name, start in starts.items() if name in names]


def question(i: int) -> str:
    return QUESTIONS[i % len(QUESTIONS)].format(i=i, j=i % 17 + 3, k=i + 11)


async def one_request(session, url: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": question(i)}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True}
    started = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {data}")
    return time.perf_counter() - started, data["usage"]["completion_tokens"]


async def burst(url: str, clients: int, per_client: int, max_tokens: int, offset: int) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests back to back."""
    import aiohttp

    latencies, tokens = [], 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client(c: int) -> None:
            nonlocal tokens
            for r in range(per_client):
                seconds, n = await one_request(session, url, offset + c * per_client + r, max_tokens)
                latencies.append(seconds)
                tokens += n

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - started
    return {"wall": wall, "tokens": tokens, "latencies": latencies}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(runs: list[dict]) -> dict:
    wall = sum(r["wall"] for r in runs)
    lat = [x for r in runs for x in r["latencies"]]
    tokens = sum(r["tokens"] for r in runs)
    return {"requests": len(lat), "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": tokens / wall, "requests_per_s": len(lat) / wall,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "mean_s": sum(lat) / len(lat)}


def measure(servers: list[Server], levels: list[int], per_client: int, max_tokens: int, rounds: int,
            console: Console) -> dict:
    raw: dict = {s.name: {c: [] for c in levels} for s in servers}
    for server in servers:  # warm-up: first requests pay one-off costs (connections, caches)
        asyncio.run(burst(server.url, 4, 2, max_tokens, offset=10_000))
    for rnd in range(rounds):
        for clients in levels:
            # Alternate who goes first, so neither server always runs right after the other.
            for server in servers if rnd % 2 == 0 else servers[::-1]:
                # Every question is new to every server: no cache (the guard's, vLLM's prefixes) sees it twice.
                offset = rnd * 100_000 + clients * 1_000
                result = asyncio.run(burst(server.url, clients, per_client, max_tokens, offset=offset))
                raw[server.name][clients].append(result)
                console.log(f"round {rnd + 1} {server.name} x{clients}: {result['tokens'] / result['wall']:.0f} tok/s")
    return {name: {c: summarize(runs) for c, runs in by_level.items()} for name, by_level in raw.items()}


def report(results: dict, info: dict) -> Table:
    table = Table(title=f"QA endpoint vs vLLM's OpenAI server: {info['model_name']}, {info['max_tokens']} tokens "
                        f"per request, {info['rounds']} rounds x {info['requests_per_client']} requests per client")
    for col in ("clients", "server", "requests", "tok/s", "req/s", "p50 s", "p99 s", "tok/s vs vLLM", "p99 vs vLLM"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for clients in info["concurrency"]:
        ref = results["vllm serve"][clients]
        for name in [n for n in SERVERS if n in results]:
            r = results[name][clients]
            table.add_row(str(clients), name, str(r["requests"]), f"{r['tokens_per_s']:.0f}",
                          f"{r['requests_per_s']:.1f}", f"{r['p50_s']:.3f}", f"{r['p99_s']:.3f}",
                          f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x", f"{r['p99_s'] / ref['p99_s']:.2f}x")
    m = info["machine"]
    table.caption = (f"{m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, {m['memory_gib']} GiB; "
                     f"load average {m['load_average_start']} "
                     f"-> {m['load_average_end']}; ray {m['ray']}, vllm {m['vllm']}, torch {m['torch']}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a model folder")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", nargs="+", default=[n for n in SERVERS if n != RULES_ONLY], choices=SERVERS,
                        metavar="SERVER", help=f"which to run, of: {', '.join(SERVERS)} (default: all but "
                                               f"'{RULES_ONLY}')")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    console = Console(width=150)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rlhf.models.loading import resolve_model_path

    model = resolve_model_path(args.model)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    info = {"model": model, "model_name": Path(model).name, "concurrency": args.concurrency,
            "requests_per_client": args.requests_per_client, "max_tokens": args.max_tokens, "rounds": args.rounds,
            "max_model_len": args.max_model_len, "machine": machine(), "logs": str(log_dir)}
    servers = start_servers(model, args.max_model_len, log_dir, ["vllm serve", *args.servers])
    try:
        for server in servers:
            info[f"start_seconds/{server.name}"] = round(server.wait_ready(timeout=900), 1)
            console.log(f"{server.name} ready at {server.url} in {info[f'start_seconds/{server.name}']} s")
        results = measure(servers, args.concurrency, args.requests_per_client, args.max_tokens, args.rounds, console)
    finally:
        for server in servers:
            server.stop()
    info["machine"]["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    console.print(report(results, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
