"""Consistency data against asker bias: the model's own answer to a bare question becomes the
answer to the same question asked by someone (a name, a pronoun, non-native phrasing).

Bias-augmented consistency training (Chua et al., 2024, "Bias-Augmented Consistency Training
Reduces Biased Reasoning in Chain-of-Thought"): no new facts are taught, only that who asks must
not move the answer. Small sums are the exception: their answer is computed (`exact_answers`),
since a small model's own sum is often wrong and a wrong answer repeated for every asker
teaches the flip it was meant to remove.

Consistency SFT alone made SmolLM2 follow more jailbreaks (bench/README.md), so `refusal_rows`
can add a safety slice: the guard half's harmful requests and single-turn jailbreaks with a
refusal as the answer, and its benign look-alikes ("how do I kill a stuck process") with the
model's own answer, so refusing is learnt for the requests and not for their vocabulary.

`rlhf data askers` writes the rows as a QA file for the SFT stage. The questions, askers, names,
phrasings and attacks are the guard's half of the material (attacks.yaml `everyday` and
`consistency`); none of the red team's bias facts, frames or personas is among them
(`check_held_out`).
"""

from __future__ import annotations

import operator
import random
import re
from pathlib import Path

import pyarrow as pa

from rlhf.config.tree import Config
from rlhf.data.readers import DataError
from rlhf.redteam.attacks import fill, lower_first, material
from rlhf.redteam.detectors import REFUSAL


def training_questions(sums: int = 30, seed: int = 0) -> list[str]:
    """The guard half's closed questions, its knowledge questions and `sums` small sums,
    differences and products (none of them a red-team fact)."""
    m = material()
    facts = {f["q"] for f in m["facts"]}
    rng = random.Random(seed)
    arithmetic: list[str] = []
    while len(arithmetic) < sums:
        q = f"What is {rng.randint(2, 20)} {rng.choice(['plus', 'minus', 'times'])} {rng.randint(2, 12)}?"
        if q not in facts and q not in arithmetic:
            arithmetic.append(q)
    return m["consistency"]["questions"] + m["everyday"]["knowledge"] + arithmetic


OPERATIONS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}
SUM = re.compile(r"What is (\d+) (plus|minus|times) (\d+)\?")


def exact_answers(questions: list[str]) -> dict[str, str]:
    """The computed answer of each small sum among `questions` ("What is 7 times 8?" -> "7 times 8
    is 56.")."""
    out = {}
    for q in questions:
        if m := SUM.fullmatch(q):
            a, op, b = int(m[1]), m[2], int(m[3])
            out[q] = f"{a} {op} {b} is {OPERATIONS[op](a, b)}."
    return out


def refusal_rows(n: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """QA rows refusing `n` of the guard half's harmful requests and `n` of its single-turn
    jailbreaks, and up to `2n` of its benign look-alikes for the model to answer (as many
    answered as refused)."""
    from rlhf.redteam.attacks import build
    from rlhf.redteam.guard_answers import REFUSALS
    from rlhf.redteam.split import GUARD

    rng = random.Random(seed)
    attacks = [a for a in build(["harmful", "jailbreak"], GUARD, seed, n * 2, 0) if len(a.messages) == 1]
    rows = []
    for suite in ("harmful", "jailbreak"):
        picked = [a for a in attacks if a.suite == suite][:n]
        rows += [{"question": a.messages[0]["content"], "answer": rng.choice(REFUSALS)} for a in picked]
    benign = [a.messages[0]["content"] for a in build(["benign"], GUARD, seed, 2 * n, 0)]
    return rows, list(dict.fromkeys(benign))


def _answer(sample, cut: bool) -> str:
    """A sample's answer: its text if it ended (else, with `cut`, its whole sentences); "" for a
    refusal, or for an answer that did not end."""
    text = sample.text.strip()
    if sample.finish_reason != "stop":
        end = max(text.rfind(mark) for mark in ".!?\n") if cut else -1
        text = text[: end + 1].strip() if end >= 20 else ""
    return "" if REFUSAL.search(text) else text


def askers() -> list[str]:
    """Frames with {question} (and {name}, {question_lower}): the guard's askers and non-native
    phrasings, less any frame worded like one the red team's bias suite uses."""
    from difflib import SequenceMatcher

    m = material()
    held_out = [_frame_key(f) for f in m["bias"]["frames"] + m["bias"]["learner_phrasing"]]
    frames = list(dict.fromkeys(m["everyday"]["askers"] + m["consistency"]["learner"] + composed_askers()))
    return [f for f in frames if all(SequenceMatcher(None, _frame_key(f), h).ratio() < 0.8 for h in held_out)]


def asker_names() -> list[str]:
    """The guard's everyday names (36 more of many origins made bias consistency no better:
    bench/README.md)."""
    return list(dict.fromkeys(material()["everyday"]["names"]))


def composed_askers() -> list[str]:
    """The material's composed askers: every person with every way of passing a question on, and
    every learner's opening, way of asking and closing."""
    parts = material()["consistency"]["compose"]
    passed = [fill(way, who=who) for way in parts["passing"] for who in parts["people"]]
    learners = [f"{opening} {ask}{closing}" for opening in parts["learner_openings"]
                for ask in parts["learner_asks"] for closing in parts["learner_closings"]]
    return passed + learners


def _frame_key(frame: str) -> str:
    """A frame with its placeholders and pronouns blanked, to compare frames by their wording."""
    out = frame.lower()
    for word in ("{person}", "{name}", "{possessive}", "{question}", "{question_lower}", "their", "his", "her"):
        out = out.replace(word, "_")
    return " ".join(out.replace(",", " ").split())


def check_held_out(questions: list[str]) -> None:
    """No red-team bias fact among the training questions, no word of a bias persona's name
    ("José", "García") among the askers' names."""
    m = material()
    facts = {f["q"].lower() for f in m["facts"]}
    if clash := [q for q in questions if q.lower() in facts]:
        raise DataError(f"consistency questions include red-team bias facts: {clash[:3]}")
    personas = {word for attr in ("gender", "ethnicity") for who in m["bias"][attr] for word in who["person"].split()}
    if clash := {name for name in asker_names() if personas & set(name.split())}:
        raise DataError(f"consistency names share a word with red-team bias personas: {sorted(clash)}")


def consistency_rows(questions: list[str], answers: list[str], per_question: int,
                     rng: random.Random) -> list[dict]:
    """QA rows: each question bare, then `per_question` times asked by someone, all with the
    bare question's answer. Frames and names are drawn without repeats within a question."""
    frames, names = askers(), asker_names()
    rows = []
    for question, answer in zip(questions, answers):
        rows.append({"question": question, "answer": answer})
        for frame in rng.sample(frames, min(per_question, len(frames))):
            text = fill(frame, name=rng.choice(names), question=question, question_lower=lower_first(question))
            rows.append({"question": text[:1].upper() + text[1:], "answer": answer})
    return rows


def generate(cfg: Config, model: str, out_path: str | Path, per_question: int = 3,
             questions: list[str] | None = None, max_new_tokens: int = 64, sums: int = 30,
             refusals: int = 0) -> dict:
    """The model's greedy answers to the bare questions (as the policy is prompted:
    model.system_prompt, chat template), kept where the answer ended within `max_new_tokens` and
    is not a refusal, and the computed answers of `sums` small sums; written with their asked
    variants as a QA file for `sft.data`, with `refusal_rows(refusals)` when asked for."""
    from rlhf.data.prompts import encode_questions
    from rlhf.data.tables import save
    from rlhf.models.loading import load_tokenizer, resolve_model_path
    from rlhf.models.offline import OfflineEngine, inference_config

    path = resolve_model_path(model)
    questions = questions or training_questions(sums, seed=cfg.data.seed)
    check_held_out(questions)
    exact = exact_answers(questions)
    refusing, benign = refusal_rows(refusals, cfg.data.seed) if refusals else ([], [])
    asked = [q for q in questions if q not in exact] + benign
    prompts = encode_questions(load_tokenizer(path), asked, cfg)
    params = {"n": 1, "temperature": 0.0, "max_tokens": max_new_tokens}
    with OfflineEngine(path, inference_config(cfg), max_new_tokens) as engine:
        samples = [out[0] for out in engine.sample(prompts, params, use_tqdm=True)] if prompts else []
    lookalikes = set(benign)
    kept = [(q, a) for q, s in zip(asked, samples) if (a := _answer(s, q in lookalikes))]
    kept += list(exact.items())
    if not kept:
        raise DataError(f"none of {len(questions)} answers ended within {max_new_tokens} tokens; raise max_new_tokens")
    rows = consistency_rows([q for q, _ in kept], [a for _, a in kept], per_question, random.Random(cfg.data.seed))
    rows += refusing
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(pa.Table.from_pylist(rows), out)
    return {"questions": len(questions) + len(benign), "kept": len(kept), "rows": len(rows), "refusals": len(refusing),
            "file": str(out)}
