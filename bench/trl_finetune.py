"""The TRL side of bench/finetune_throughput.py: SFTTrainer, RewardTrainer or DPOTrainer on the
examples the driver wrote.

    bench/.venv-trl/bin/python bench/trl_finetune.py WORKLOAD.json RESULT.json

Runs in TRL's own venv (bench/setup_trl.sh). The examples arrive tokenised by our stage, so TRL
trains on the very tokens ours does:
  sft: `input_ids` and a `completion_mask` over the answer tokens (`completion_only_loss`);
  rm:  `chosen_ids` and `rejected_ids` (prompt and answer as our reward model reads them);
  dpo: `prompt_ids`, `chosen_ids`, `rejected_ids` (DPOTrainer always tokenises text, so a
       subclass skips that step for rows that arrive tokenised; everything else is TRL's own:
       the reference model's forward every step, the sigmoid loss, the collator).
Records the wall-clock time at the end of every optimizer step and the logged training loss.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()


def common_args(w: dict, out_dir: str) -> dict:
    from bench.common import TRL_CPU_ARGS

    return {"output_dir": out_dir, "per_device_train_batch_size": w["micro_batch_size"],
            "gradient_accumulation_steps": w["batch_size"] // w["micro_batch_size"], "learning_rate": w["lr"],
            "lr_scheduler_type": "constant",  # ours keeps the learning rate constant too
            "max_steps": w["steps"], "max_length": w["max_length"], "seed": w["seed"], "bf16": w["bf16"],
            **TRL_CPU_ARGS}


def sft_trainer(w: dict, dataset, out_dir: str, callbacks: list):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype="float32")
    args = SFTConfig(completion_only_loss=True, **common_args(w, out_dir))
    return SFTTrainer(model=model, args=args, train_dataset=dataset,
                      processing_class=AutoTokenizer.from_pretrained(w["model_path"]), callbacks=callbacks)


def rm_trainer(w: dict, dataset, out_dir: str, callbacks: list):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(w["model_path"])
    model = AutoModelForSequenceClassification.from_pretrained(w["model_path"], num_labels=1, dtype="float32")
    model.config.pad_token_id = model.config.pad_token_id or tokenizer.pad_token_id
    # Ours trains with the model's dropout on, as transformers' train mode has it.
    args = RewardConfig(disable_dropout=False, **common_args(w, out_dir))
    return RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks)


def dpo_trainer(w: dict, dataset, out_dir: str, callbacks: list):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class TokenisedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype="float32")
    args = DPOConfig(beta=w["beta"], **common_args(w, out_dir))
    return TokenisedDPOTrainer(model=model, args=args, train_dataset=dataset,
                               processing_class=AutoTokenizer.from_pretrained(w["model_path"]), callbacks=callbacks)


TRAINERS = {"sft": sft_trainer, "rm": rm_trainer, "dpo": dpo_trainer}
TRAINER_NAMES = {"sft": "SFTTrainer", "rm": "RewardTrainer", "dpo": "DPOTrainer"}


def main() -> None:
    workload_path, result_path = sys.argv[1], sys.argv[2]
    w = json.loads(Path(workload_path).read_text())
    sys.path.insert(0, w["root"])
    from datasets import Dataset

    from bench.common import load_average, machine, trl_clock, versions

    marks: dict = {}
    clock = trl_clock(marks, "loss")
    dataset = Dataset.from_list(w["examples"])
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix=f"trl-{w['stage']}-") as out_dir:
        trainer = TRAINERS[w["stage"]](w, dataset, out_dir, [clock])
        trainer.train()
    result = {"train_begin": marks["train_begin"] - STARTED,
              "step_end": [t - STARTED for t in marks["step_end"]], "loss": [row["loss"] for row in marks["logs"]],
              "load_average": [load_start, load_average()],
              "machine": machine(**versions("trl", "transformers", "accelerate")),
              "settings": {"trainer": TRAINER_NAMES[w["stage"]], "bf16": w["bf16"], "processes": 1,
                           "padding_free": getattr(trainer.args, "padding_free", False)}}
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
