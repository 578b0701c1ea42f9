"""The TRL side of bench/rl_throughput.py: GRPOTrainer on the workload the driver wrote.

    bench/.venv-trl/bin/python bench/trl_grpo.py WORKLOAD.json RESULT.json

Runs in TRL's own venv (bench/setup_trl.sh). Prompts arrive already chat-templated, in the
order our sampler visits them, so with `shuffle_dataset=False` step i of both sides sees the
same prompts. The reward is the project's own `rlhf.rl.rewards.combine` (standard library only).
Records wall-clock time at the end of every optimizer step and TRL's logged metrics.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()


def build_config(w: dict, out_dir: str):
    from trl import GRPOConfig

    from bench.common import TRL_CPU_ARGS

    return GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=w["prompts_per_step"] * w["n_samples"],  # completions per step
        gradient_accumulation_steps=1,
        num_generations=w["n_samples"],
        max_completion_length=w["max_new_tokens"],
        temperature=w["temperature"],
        top_p=w["top_p"],
        learning_rate=w["lr"],
        lr_scheduler_type="constant",  # ours keeps the learning rate constant too
        beta=w["kl_coef"],
        epsilon=w["clip_eps"],
        num_iterations=1,
        scale_rewards="group",
        max_steps=w["steps"],
        shuffle_dataset=False,
        seed=w["seed"],
        bf16=w["trl_bf16"],
        gradient_checkpointing=w["trl_gradient_checkpointing"],
        **TRL_CPU_ARGS,
    )


def main() -> None:
    workload_path, result_path = sys.argv[1], sys.argv[2]
    w = json.loads(Path(workload_path).read_text())
    sys.path.insert(0, w["root"])
    from datasets import Dataset
    from trl import GRPOTrainer

    from bench.common import load_average, machine, trl_clock, versions
    from rlhf.rl.rewards import combine

    rules = w["rules"]
    dataset = Dataset.from_list(w["prompts"])

    def reward(prompts, completions, reference, **_):
        return [combine(c, r, rules)[0] for c, r in zip(completions, reference)]

    reward.__name__ = "combine"
    marks: dict = {}
    clock = trl_clock(marks, "reward")

    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as out_dir:
        trainer = GRPOTrainer(model=w["model_path"], reward_funcs=reward, args=build_config(w, out_dir),
                              train_dataset=dataset, callbacks=[clock])
        trainer.train()
    steps = []
    for end, logs in zip(marks["step_end"], marks["logs"]):
        steps.append({"end": end - STARTED, "reward": logs["reward"],
                      "samples": w["prompts_per_step"] * w["n_samples"],
                      "tokens": logs["completions/mean_length"] * w["prompts_per_step"] * w["n_samples"],
                      "kl": logs.get("kl"), "entropy": logs.get("entropy")})
    result = {"train_begin": marks["train_begin"] - STARTED, "steps": steps,
              "load_average": [load_start, load_average()],
              "machine": machine(**versions("trl", "transformers", "accelerate")),
              "settings": {"bf16": w["trl_bf16"], "gradient_checkpointing": w["trl_gradient_checkpointing"],
                           "loss_type": trainer.args.loss_type, "generation": "transformers generate"}}
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
