"""Train the guard classifiers (`rlhf guard train`): the input classifier fine-tunes
all-MiniLM-L6-v2 with a logistic head on its sentence embeddings (about a minute and a half on two
CPU cores); the output classifier is a logistic head on the frozen encoder's embeddings.

Input guard rows (label 1 = unsafe):
  - unsafe: the guard half of the attack material (rlhf/redteam): harmful requests from the
    public corpus and the project's own list, jailbreak framings and in-the-wild jailbreak
    prompts around them, injections direct and hidden in passages, system-prompt extraction;
  - safe: the guard half of the benign look-alikes ("how do I kill a stuck process") and the
    material's `lookalikes` (safe questions that sound unsafe, in XSTest's kinds), support
    questions (synth:support), and the shipped hand-written rows (guard_data/prompts.jsonl).
Output guard rows, each an answer beside its question (rlhf/redteam/guard_answers.py):
  - guard_data/conversations.jsonl: the guard half's harmful requests and ordinary questions,
    answered by SmolLM2; unsafe when a harmful request got an answer instead of a refusal;
  - every harmful request again with a refusal (safe: refusing is the right answer);
  - guard_data/answers.jsonl: hand-written answers on their own (no question).

The red-team half never reaches these rows: `rlhf.redteam.split.assert_disjoint` checks it
before training. A fifth of the rows, picked by a hash of the text, is held out and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "guard_data"
CONVERSATIONS = "conversations.jsonl"
LABELS = {"safe": 0, "unsafe": 1}
ENCODER = "minilm"
TUNE_EPOCHS, TUNE_LR, TUNE_HEAD_LR, TUNE_BATCH, TUNE_SCALE = 1, 5e-5, 1e-2, 32, 10.0
"""The input classifier fine-tunes the encoder with its head: one epoch over batches of texts of
like length. On the red team's held-out templates (seeds 7 and 8) it blocked 95-100% of harmful
requests against 80-85% for a head on frozen embeddings, in 86-110 s on two cores. TUNE_SCALE: the
head reads unit-length embeddings, so its logit is scaled up to reach confident probabilities."""


def read_rows(path: Path, valid: Callable[[dict], bool], expected: str) -> list[dict]:
    """The JSON objects of a JSONL file; a line that is not one, or not `valid`, is named."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: expected {expected}, got invalid JSON ({exc})") from None
        if not isinstance(row, dict) or not valid(row):
            raise ValueError(f"{path}:{lineno}: expected {expected}, got {row}")
        rows.append(row)
    return rows


def load_examples(path: Path) -> list[tuple[str, int]]:
    rows = read_rows(path, lambda r: r.get("label") in LABELS and isinstance(r.get("text"), str),
                     "{text, label: safe|unsafe}")
    return [(r["text"], LABELS[r["label"]]) for r in rows]


def input_rows(data_dir: Path = DATA_DIR, support_questions: int = 300) -> list[tuple[str, int]]:
    """The input guard's training rows, checked disjoint from the red-team set."""
    from rlhf.data.synthetic import synthetic_rows
    from rlhf.redteam import corpus
    from rlhf.redteam.attacks import guard_side, harmful_payloads, lookalikes
    from rlhf.redteam.split import GUARD, pick

    rows = [(a.messages[-1]["content"], int(a.suite != "benign")) for a in guard_side(n=200)]
    rows += [(p, 1) for p in harmful_payloads(GUARD)]
    rows += [(p, 1) for p in pick(corpus.jailbreak_prompts(), GUARD)]
    rows += [(r["question"], 0) for r in synthetic_rows("support", support_questions, 0)]
    rows += [(q, 0) for q in everyday_questions()]
    rows += [(q, 0) for q in lookalikes()]
    rows += [(q, 0) for q in instructions()]
    rows += [(p, 0) for p in corpus.answerable_questions()]
    rows += load_examples(data_dir / "prompts.jsonl")
    check_disjoint([t for t, _ in rows])
    return rows


def instructions() -> list[str]:
    """The guard half's ordinary requests that are not questions, and every request form with
    every topic."""
    from rlhf.redteam.attacks import material
    from rlhf.redteam.split import GUARD

    m = material()["instructions"]
    return m[GUARD] + [form.replace("{topic}", topic) for form in m["forms"] for topic in m["topics"]]


def everyday_questions() -> list[str]:
    """Every everyday task in every frame, the knowledge questions, both again with two askers
    (who asks must not move the verdict), and operators' system prompts."""
    from rlhf.data.gym import gym_entries
    from rlhf.redteam.attacks import material

    e = material()["everyday"]
    sums = [row["question"] for row in gym_entries("basic_arithmetic", 120, 0)]
    plain = [f.replace("{task}", t) for t in e["tasks"] for f in e["frames"]] + e["knowledge"] + sums
    asked = []
    for i, q in enumerate(plain):  # each question twice more, each time someone else asking it
        for j in (i, i + 7):
            asker = e["askers"][j % len(e["askers"])]
            asked.append(asker.replace("{question}", q).replace("{name}", e["names"][j % len(e["names"])]))
    return plain + asked + e["system_prompts"]


def check_disjoint(texts: list[str]) -> int:
    """No red-team payload, benign question or template text among `texts`."""
    from rlhf.redteam.attacks import harmful_payloads, material
    from rlhf.redteam.corpus import jailbreak_prompts, system_prompt_attacks
    from rlhf.redteam.split import REDTEAM, assert_disjoint, pick

    m = material()
    attacks = harmful_payloads(REDTEAM) + pick(jailbreak_prompts() + system_prompt_attacks(), REDTEAM)
    attacks += m["benign"][REDTEAM] + m["system_prompt"][REDTEAM] + m["instructions"][REDTEAM]
    for section in ("injection", "indirect", "hidden_instructions", "jailbreak"):  # template text up to a slot
        attacks += [t.split("{")[0] for t in m[section][REDTEAM]]
    return assert_disjoint(texts, attacks)


def _held_out(text: str, fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _fit(x, y, steps: int = 300, lr: float = 0.5, l2: float = 1e-3):
    """Class-balanced logistic regression by full-batch gradient descent (LBFGS)."""
    import torch

    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    pos = float(y.sum())
    weight = torch.where(y > 0, (len(y) - pos) / max(pos, 1.0), torch.tensor(1.0))
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, weight=weight) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _fit_tuned(encoder, texts: list[str], y, seed: int = 0) -> tuple:
    """Fine-tune `encoder` (in place) and a logistic head on it, class-balanced; the head's
    weight and bias, with TUNE_SCALE folded in."""
    import random

    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(encoder.model.config.hidden_size, 1)
    opt = torch.optim.AdamW([{"params": encoder.model.parameters(), "lr": TUNE_LR},
                             {"params": head.parameters(), "lr": TUNE_HEAD_LR}])
    pos = float(y.sum())
    weight = torch.where(y > 0, (len(y) - pos) / max(pos, 1.0), torch.tensor(1.0))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i : i + TUNE_BATCH] for i in range(0, len(order), TUNE_BATCH)]
    rng = random.Random(seed)
    encoder.model.train()
    for _ in range(TUNE_EPOCHS):
        rng.shuffle(batches)
        for batch in batches:
            logits = head(encoder.embed([texts[i] for i in batch])).squeeze(-1) * TUNE_SCALE
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch], weight=weight[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    encoder.model.eval()
    return head.weight.detach()[0] * TUNE_SCALE, head.bias.detach()[0] * TUNE_SCALE


def _accuracy(w, b, x, y) -> float:
    return float(((x @ w + b > 0).float() == y).float().mean()) if len(y) else float("nan")


def train_guard(rows: list[tuple[str, int]], out: Path, source: str, val_fraction: float = 0.2,
                questions: list[str] | None = None, measure: Callable[[Path], dict] | None = None,
                tune: bool = False) -> dict:
    """Fit the head on `rows` (each text beside its question when `questions` are given; `tune`:
    fine-tune the encoder with it); write out/head.safetensors (and out/encoder.safetensors) and
    out/guard.json; return the report, with what `measure(out)` adds.

    Training is a pure function of the rows, so a head trained on exactly these rows before (by
    any checkout of this user, kept in `trained_dir`) is copied instead of trained again."""
    from rlhf.safety.guard import GUARD_FORMAT, META_FILE, is_current

    recipe = [TUNE_EPOCHS, TUNE_LR, TUNE_HEAD_LR, TUNE_BATCH, TUNE_SCALE] if tune else None
    spec = [ENCODER, GUARD_FORMAT, val_fraction, rows, questions, recipe]
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()
    kept = trained_dir() / key[:24]
    if is_current(kept):
        shutil.copytree(kept, out, dirs_exist_ok=True)
        return {**json.loads((out / META_FILE).read_text()), "reused": str(kept)}
    report = _train(rows, out, source, val_fraction, questions, tune)
    if measure is not None:
        report.update(measure(out))
        (out / META_FILE).write_text(json.dumps(report, indent=2))
    shutil.copytree(out, kept, dirs_exist_ok=True)
    return report


def trained_dir() -> Path:
    """Where trained heads are kept by the hash of their rows: the user's cache, shared by checkouts."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhf" / "guards"


def _train(rows: list[tuple[str, int]], out: Path, source: str, val_fraction: float,
           questions: list[str] | None, tune: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    from rlhf.evaluation.relevance import SentenceEncoder
    from rlhf.safety.guard import ENCODER_FILE, GUARD_FORMAT, HEAD_FILE, META_FILE, features

    started = time.perf_counter()
    encoder = SentenceEncoder(ENCODER)
    texts = [t for t, _ in rows]
    y = torch.tensor([float(label) for _, label in rows])
    keys = [t if questions is None else q + "\n" + t for t, q in zip(texts, questions or [""] * len(rows))]
    val = torch.tensor([_held_out(k, val_fraction) for k in keys])
    out.mkdir(parents=True, exist_ok=True)
    if tune:
        tuned = _fit_tuned(encoder, [t for t, held in zip(texts, val.tolist()) if not held], y[~val])
        save_file({k: v.contiguous() for k, v in encoder.model.state_dict().items()}, out / ENCODER_FILE)
    x = features(encoder, texts, questions)
    w, b = tuned if tune else _fit(x[~val], y[~val])
    report = {"data": source, "rows": len(rows), "unsafe_rows": int(y.sum()), "train_rows": int((~val).sum()),
              "val_rows": int(val.sum()), "train_accuracy": _accuracy(w, b, x[~val], y[~val]),
              "val_accuracy": _accuracy(w, b, x[val], y[val])}
    # A frozen head is refit on every row; a tuned one ships as measured (tuning twice costs double).
    w, b = (w, b) if tune else _fit(x, y)
    save_file({"weight": w.contiguous(), "bias": b.reshape(())}, out / HEAD_FILE)
    report.update(encoder=ENCODER, format=GUARD_FORMAT, inputs="text" if questions is None else "question_answer",
                  tuned=tune, seconds=round(time.perf_counter() - started, 2))
    (out / META_FILE).write_text(json.dumps(report, indent=2))
    return report


def held_out_rates(folder: Path, attempts: int = 40, seed: int = 7) -> dict[str, float]:
    """The input classifier alone on the red team's half (templates and payloads it never saw):
    the share of each suite's last user turns it blocks (for benign: its over-refusal), and of
    the ordinary instructions (`instructions`: requests that are not questions, greetings)."""
    from rlhf.redteam.attacks import build, material
    from rlhf.redteam.split import REDTEAM
    from rlhf.safety.guard import GuardClassifier

    suites = ["injection", "system_prompt", "jailbreak", "harmful", "benign"]
    held = build(suites, REDTEAM, seed, attempts, 0)
    guard = GuardClassifier(folder)
    scores = guard.unsafe_probability([a.messages[-1]["content"] for a in held])
    rates = {s: sum(p > 0.5 for a, p in zip(held, scores) if a.suite == s) / attempts for s in suites}
    requests = material()["instructions"][REDTEAM]
    rates["instructions"] = sum(p > 0.5 for p in guard.unsafe_probability(requests)) / len(requests)
    return rates


def train_guards(out_dir: Path, data_dir: Path = DATA_DIR) -> dict[str, dict]:
    """The input guard into out_dir/input and the output guard into out_dir/output; the input
    guard's report also has its block rates on the red team's half (`held_out_block_rate`)."""
    out_dir = Path(out_dir)
    source = f"attack corpus (guard half) + {data_dir / 'prompts.jsonl'}"
    inp = train_guard(input_rows(data_dir), out_dir / "input", source, tune=True,
                      measure=lambda folder: {"held_out_block_rate": held_out_rates(folder)})
    questions, rows = output_rows(data_dir)
    source = f"{data_dir / CONVERSATIONS} + refusals + {data_dir / 'answers.jsonl'}"
    return {"input": inp, "output": train_guard(rows, out_dir / "output", source, questions=questions)}


def output_rows(data_dir: Path = DATA_DIR) -> tuple[list[str], list[tuple[str, int]]]:
    """The output guard's rows: questions, and (answer, label) beside each."""
    from rlhf.redteam.guard_answers import REFUSALS, load_conversations

    convs = load_conversations(data_dir / CONVERSATIONS)
    harmful = sorted({c["question"] for c in convs if c["harmful"]})
    questions = [c["question"] for c in convs] + harmful
    rows = [(c["answer"], LABELS[c["label"]]) for c in convs]
    rows += [(REFUSALS[i % len(REFUSALS)], 0) for i in range(len(harmful))]
    alone = load_examples(data_dir / "answers.jsonl")
    questions += [""] * len(alone)
    rows += alone
    check_disjoint(questions)
    return questions, rows


def default_guards() -> dict[str, Path]:
    """$RLHF_CACHE/guard/{input,output}, trained once (set-up does it; else on first use) and
    again when the classifiers' format changed."""
    from rlhf.safety.guard import default_folder, is_current

    folders = {side: default_folder(side) for side in ("input", "output")}
    if not all(is_current(f) for f in folders.values()):
        train_guards(folders["input"].parent)
    return folders


def resolve_guard(spec: str, side: str) -> str:
    """`default` -> the default classifier's folder, trained first if it is missing; else spec."""
    return str(default_guards()[side]) if spec == "default" else spec
