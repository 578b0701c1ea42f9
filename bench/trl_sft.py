"""The TRL side of bench/finetune_throughput.py: SFTTrainer on the examples the driver wrote.

    bench/.venv-trl/bin/python bench/trl_sft.py WORKLOAD.json RESULT.json

Runs in TRL's own venv (bench/setup_trl.sh). The examples arrive tokenised by our SFT stage
(`input_ids` and a `completion_mask` over the answer tokens), so TRL trains on the very tokens
ours does, loss on the answer only (`completion_only_loss`). Records the wall-clock time at the
end of every optimizer step and the logged training loss.
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
    from trl import SFTConfig

    from bench.common import TRL_CPU_ARGS

    return SFTConfig(
        output_dir=out_dir,
        per_device_train_batch_size=w["micro_batch_size"],
        gradient_accumulation_steps=w["batch_size"] // w["micro_batch_size"],
        learning_rate=w["lr"],
        lr_scheduler_type="constant",  # ours keeps the learning rate constant too
        max_steps=w["steps"],
        max_length=w["max_length"],
        completion_only_loss=True,
        seed=w["seed"],
        bf16=w["bf16"],
        **TRL_CPU_ARGS,
    )


def main() -> None:
    workload_path, result_path = sys.argv[1], sys.argv[2]
    w = json.loads(Path(workload_path).read_text())
    sys.path.insert(0, w["root"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from bench.common import load_average, machine, trl_clock, versions

    marks: dict = {}
    clock = trl_clock(marks, "loss")

    dataset = Dataset.from_list(w["examples"])
    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(w["model_path"])
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="trl-sft-") as out_dir:
        trainer = SFTTrainer(model=model, args=build_config(w, out_dir), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[clock])
        trainer.train()
    result = {"train_begin": marks["train_begin"] - STARTED,
              "step_end": [t - STARTED for t in marks["step_end"]], "loss": [row["loss"] for row in marks["logs"]],
              "load_average": [load_start, load_average()],
              "machine": machine(**versions("trl", "transformers", "accelerate")),
              "settings": {"bf16": w["bf16"], "processes": 1, "padding_free": trainer.args.padding_free}}
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
