"""Train the guard classifiers (`rlhf guard train`): MiniLM with a two-way head, on CPU.

Data: JSONL rows {"text", "label": "safe" | "unsafe"}; serve/guard_data/prompts.jsonl trains
the input guard and answers.jsonl the output guard. A fifth of the rows, picked by a hash of
the text, is held out and its accuracy reported (it is small: read it as a smoke check, not a
benchmark). The result is a plain HF folder (labels 0 = safe, 1 = unsafe) that
`serve.input_guard` / `serve.output_guard` point at.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "guard_data"
GUARDS = {"input": "prompts.jsonl", "output": "answers.jsonl"}
LABELS = {"safe": 0, "unsafe": 1}
MAX_LENGTH = 96  # tokens; questions and answers that decide safety are short


def load_examples(path: Path) -> list[tuple[str, int]]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in LABELS or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{lineno}: expected {{text, label: safe|unsafe}}, got {row}")
        rows.append((row["text"], LABELS[row["label"]]))
    return rows


def _held_out(text: str, fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _accuracy(model, tokenizer, rows: list[tuple[str, int]]) -> float:
    import torch

    if not rows:
        return float("nan")
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.inference_mode():
        pred = model(**enc).logits.argmax(-1).tolist()
    return sum(int(p == y) for p, (_, y) in zip(pred, rows)) / len(rows)


def train_guard(data: Path, out: Path, epochs: int = 6, lr: float = 1e-4, batch_size: int = 16,
                seed: int = 0, val_fraction: float = 0.2, threads: int = 1) -> dict:
    """Fine-tune MiniLM on `data`; write the classifier to `out`; return accuracies and timing.

    One torch thread by default: on a busy 2-core machine a training step took 1.5 s with one
    thread and 9 s with two (threads spin-waiting on each other)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.models.loading import resolve_model_path

    started = time.perf_counter()
    torch.set_num_threads(threads)
    rows = load_examples(data)
    train = [r for r in rows if not _held_out(r[0], val_fraction)]
    val = [r for r in rows if _held_out(r[0], val_fraction)]
    torch.manual_seed(seed)
    backbone = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=2, id2label={0: "safe", 1: "unsafe"}, label2id=LABELS)
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(epochs):
        order = train[:]
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            enc = tokenizer([t for t, _ in chunk], truncation=True, max_length=MAX_LENGTH, padding=True,
                            return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y for _, y in chunk])).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
    model.eval()
    report = {"data": str(data), "rows": len(rows), "train_rows": len(train), "val_rows": len(val),
              "train_accuracy": _accuracy(model, tokenizer, train), "val_accuracy": _accuracy(model, tokenizer, val),
              "epochs": epochs, "seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report["seconds"] = round(time.perf_counter() - started, 2)
    (out / "guard_meta.json").write_text(json.dumps(report, indent=2))
    return report


def train_guards(out_dir: Path, data_dir: Path = DATA_DIR, **kwargs) -> dict[str, dict]:
    """Train the input and the output guard into out_dir/input and out_dir/output."""
    return {name: train_guard(data_dir / file, Path(out_dir) / name, **kwargs) for name, file in GUARDS.items()}
