"""Does overlapping the next rollout with the current update pay on this machine?

    .venv/bin/python bench/overlap.py [--model smollm2|tiny|DIR] [--reps 3] [--samples 16]
        [--prompt-tokens 48] [--new-tokens 64]

One RL step's two big phases, as separate processes the way the roles run: an update (forward,
backward and a fused AdamW step of the policy in the config's dtype, eager attention) on
`samples` sequences of prompt + new tokens, and a vLLM generation of `samples` responses of
`new-tokens` tokens (EOS ignored, so every call does the same work). Three layouts, each timed
over `reps` steps after a warm-up:

- sequential: update, then generation, each with every core (what `rlhf train` does);
- overlapped, shared cores: both at once, each with every core;
- overlapped, split cores: both at once, each pinned to its own share of the cores.

An overlapped step lasts until both phases finish. Writes bench/results/overlap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_average, machine, machine_table, median, write_result  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--role", choices=["update", "generate"], help=argparse.SUPPRESS)  # internal
    p.add_argument("--go", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one phase (child)


def update_phase(args, cfg, path: str):
    import torch

    from rlhf.models.loading import load_causal_lm
    from rlhf.models.logprobs import response_logprobs

    model = load_causal_lm(path, cfg.model.dtype, "eager").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (args.samples, args.prompt_tokens + args.new_tokens))
    mask = torch.ones_like(ids)

    def run() -> None:
        response_logprobs(model, ids, mask, args.prompt_tokens, args.new_tokens).mean().backward()
        opt.step()
        opt.zero_grad()

    return run


def generate_phase(args, cfg, path: str):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlhf.models.offline import vllm_engine_kwargs

    llm = LLM(model=path, **vllm_engine_kwargs(cfg, args.new_tokens))
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, temperature=1.0, logprobs=0)
    prompts = [TokensPrompt(prompt_token_ids=[100 + i] * args.prompt_tokens) for i in range(args.samples)]
    return lambda: llm.generate(prompts, params, use_tqdm=False)


def child(args) -> None:
    import torch

    from rlhf.config.tree import load_config
    from rlhf.models.loading import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"model.path={args.model}"])
    path = resolve_model_path(cfg.model.path)
    run = (update_phase if args.role == "update" else generate_phase)(args, cfg, path)
    run()  # warm-up
    print("READY", flush=True)
    while not Path(args.go).exists():
        time.sleep(0.01)
    times = []
    for _ in range(args.reps):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    print("RESULT " + json.dumps(times), flush=True)


# ----------------------------------------------------------------------------- layouts (driver)


def start(args, role: str, go: Path, cores: list[int] | None) -> subprocess.Popen:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, __file__, "--role", role, "--go", str(go), "--reps", str(args.reps),
           "--config", args.config, "--model", args.model, "--samples", str(args.samples),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
    if cores is not None:
        cmd += ["--threads", str(len(cores))]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def run_together(args, specs: dict[str, list[int] | None], tag: str) -> dict[str, list[float]]:
    """Start the phases in `specs` (role -> cores or None for all), release them at once."""
    go = Path(f"/tmp/rlhf-overlap-{os.getpid()}-{tag}")
    go.unlink(missing_ok=True)
    procs = {role: start(args, role, go, cores) for role, cores in specs.items()}
    for role, proc in procs.items():
        for line in proc.stdout:
            if line.startswith("READY"):
                break
        else:
            raise SystemExit(f"{role} phase failed to start (exit {proc.wait()})")
    go.touch()
    out = {}
    for role, proc in procs.items():
        for line in proc.stdout:
            if line.startswith("RESULT "):
                out[role] = json.loads(line.removeprefix("RESULT "))
        proc.wait()
    go.unlink(missing_ok=True)
    return out


def layouts(args) -> dict[str, dict]:
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    alone = {role: run_together(args, {role: None}, role)[role] for role in ("update", "generate")}
    shared = run_together(args, {"update": None, "generate": None}, "shared")
    split = run_together(args, {"update": cores[:half], "generate": cores[half:] or cores[:1]}, "split")
    step = lambda t: [max(u, g) for u, g in zip(t["update"], t["generate"])]  # noqa: E731
    return {
        "sequential": {"update": median(alone["update"]), "generate": median(alone["generate"]),
                       "step": median([u + g for u, g in zip(alone["update"], alone["generate"])])},
        "overlapped, shared cores": {"update": median(shared["update"]), "generate": median(shared["generate"]),
                                     "step": median(step(shared))},
        f"overlapped, split cores ({half}+{len(cores) - half})": {
            "update": median(split["update"]), "generate": median(split["generate"]), "step": median(step(split))},
    }


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.role:
        child(args)
        return
    from rich.console import Console
    from rich.table import Table

    load_start = load_average()
    rows = layouts(args)
    base = rows["sequential"]["step"]
    table = Table(title=f"update + generation of {args.samples} x ({args.prompt_tokens} + {args.new_tokens}) tokens "
                        f"on {args.model}, median of {args.reps}")
    for col in ("layout", "update s", "generate s", "step s", "vs sequential"):
        table.add_column(col, justify="left" if col == "layout" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['update']:.2f}", f"{r['generate']:.2f}", f"{r['step']:.2f}",
                      f"{base / r['step']:.2f}x")
    console = Console()
    console.print(table)
    info = machine()
    console.print(machine_table("Machine", {"this run": {**info, "load average": f"{load_start} / {load_average()}"}}))
    result = {"settings": vars(args), "layouts": rows, "machine": info, "load_average": [load_start, load_average()]}
    print(f"wrote {write_result('overlap', result)}")


if __name__ == "__main__":
    main()
