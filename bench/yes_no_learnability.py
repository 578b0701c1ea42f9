"""How many labelled yes/no questions does a model need before it reads the sheet?

    .venv/bin/python bench/yes_no_learnability.py --model runs/support-qa/sft/model [--examples 160] [--lr 2e-5]

Plain supervised steps (AdamW, batches of 8, cross-entropy on the answer's first token) on
training-split yes/no questions of `synth:support`, and after every 10 steps the greedy yes/no
accuracy on 150 held-out ones (yes vs no logit at the answer's first position). It measures the
supervised signal the skill needs, to set beside the RL stage's yes/no prompts
(bench/README.md, "RL recipes on support-desk QA"). Writes bench/results/yes_no_learnability.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, write_result  # noqa: E402


def main(argv=None) -> None:
    import torch

    from rlhf.data.prompts import render_prompt
    from rlhf.data.synthetic import synthetic_rows
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--examples", type=int, default=160)
    p.add_argument("--lr", type=float, default=2e-5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    tok, model = load_tokenizer(args.model), load_causal_lm(args.model, "float32")
    def yes_no(split: str, n: int, seed: int) -> list[dict]:
        return [r for r in synthetic_rows(f"support?split={split}", 6 * n, seed) if r["type"] == "yes_no"][:n]

    train, test = yes_no("train", args.examples, 7), yes_no("eval", 150, 12345)
    answer = {w: tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no")}

    def last_logits(row):
        ids = tok(render_prompt(tok, row["question"]), return_tensors="pt", add_special_tokens=False).input_ids
        return model(ids).logits[0, -1]

    def accuracy() -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for r in test:
                logits = last_logits(r)
                right += bool(logits[answer["yes"]] > logits[answer["no"]]) == (r["reference"] == "yes")
        model.train()
        return float(right) / len(test)

    curve = [{"examples": 0, "accuracy": accuracy()}]
    print(f"0 examples: held-out yes/no accuracy {curve[0]['accuracy']:.3f}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    started = time.perf_counter()
    for step in range(len(train) // 8):
        batch = train[step * 8 : (step + 1) * 8]
        loss = sum(torch.nn.functional.cross_entropy(last_logits(r)[None], torch.tensor([answer[r["reference"]]]))
                   for r in batch) / len(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if (step + 1) % 10 == 0:
            curve.append({"examples": (step + 1) * 8, "accuracy": accuracy(), "loss": float(loss.detach())})
            print(f"{curve[-1]['examples']} examples: held-out yes/no accuracy {curve[-1]['accuracy']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    write_result("yes_no_learnability", {"machine": machine(), "model": args.model, "lr": args.lr,
                                              "held_out": len(test), "curve": curve})


if __name__ == "__main__":
    main()
