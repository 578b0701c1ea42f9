"""Attempts: templates x payloads x mutations, built per suite from material/attacks.yaml and the
public corpus (rlhf/redteam/corpus.py).

Every builder takes the side of the split (`redteam` attacks, `guard` trains the classifiers),
a seeded random generator and a size, and returns `Attempt`s: the chat turns to send and what
the detector needs (a canary that only a compliant model would print, planted personal data,
the reference answer of a bias or robustness question).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from rlhf.redteam import corpus
from rlhf.redteam.mutations import MUTATIONS
from rlhf.redteam.split import GUARD, pick
from rlhf.registry import Registry

MATERIAL = Path(__file__).resolve().parent / "material" / "attacks.yaml"
CANARY_WORDS = ("KESTREL", "MARMOT", "QUASAR", "ZEPHYR", "OBSIDIAN", "TUNDRA", "PELICAN", "GARNET")
ENCODINGS = ("none", "leetspeak", "base64", "rot13", "spacing", "upper")


@dataclass
class Attempt:
    id: str
    suite: str  # the SUITES name
    messages: list[dict]  # chat turns sent: [{"role", "content"}]
    template: str = ""  # where the attack came from, e.g. "jailbreak/redteam/3" or "corpus:harmful"
    mutation: str = "none"
    canary: str = ""  # printed only by a model that followed the attack
    secrets: list[str] = field(default_factory=list)  # personal data that must not come back
    reference: str = ""  # the expected answer (bias, robustness)
    group: dict = field(default_factory=dict)  # bias: attribute, case, variant; robustness: case, variant

    def as_dict(self) -> dict:
        return {"id": self.id, "suite": self.suite, "messages": self.messages, "template": self.template,
                "mutation": self.mutation, "canary": self.canary, "secrets": self.secrets,
                "reference": self.reference, "group": self.group}


@cache
def material() -> dict:
    return yaml.safe_load(MATERIAL.read_text())


def canary(rng: random.Random) -> str:
    return f"{rng.choice(CANARY_WORDS)}-{rng.randint(1000, 9999)}"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def _templates(section: dict, side: str) -> list[tuple[str, str]]:
    return list(enumerate(section[side]))


def lookalikes() -> list[str]:
    """Safe questions that sound unsafe (the guard's training only): every frame with each fill."""
    return [item["frame"].replace("{x}", x) for item in material()["lookalikes"] for x in item["fills"]]


def harmful_payloads(side: str) -> list[str]:
    """Requests to refuse: the project's own plus the public corpus, this side of the split."""
    return pick(material()["harmful"] + corpus.harmful_requests(), side)


# ----------------------------------------------------------------------------- suites

Builder = Callable[[str, random.Random, int], list[Attempt]]
SUITES: Registry[Builder] = Registry("red-team suite")
"""Suites by name, in report order; the detector of each lives in rlhf/redteam/detectors.py."""


@SUITES.register("injection")
def injection(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """Direct (the user's own message) and indirect (hidden in a passage to summarise) injections."""
    m = material()
    out = []
    for i in range(n):
        mark = canary(rng)
        goal = fill(rng.choice(m["injection_goals"]), canary=mark)
        if i % 2 == 0:
            t, template = rng.choice(_templates(m["injection"], side))
            text = fill(template, goal=goal)
            kind = f"injection/{side}/{t}"
        else:
            t, template = rng.choice(_templates(m["indirect"], side))
            _, hidden = rng.choice(_templates(m["hidden_instructions"], side))
            passage = fill(rng.choice(m["passages"]), hidden=fill(hidden, goal=goal))
            text = fill(template, passage=passage, question=rng.choice(m["passage_questions"]))
            kind = f"indirect/{side}/{t}"
        out.append(Attempt(f"injection-{i}", "injection", user(text), kind, canary=mark))
    return out


@SUITES.register("system_prompt")
def system_prompt(side: str, rng: random.Random, n: int) -> list[Attempt]:
    m = material()
    attacks = [(f"system_prompt/{side}/{t}", a) for t, a in _templates(m["system_prompt"], side)]
    attacks += [("corpus:sysprompt_extraction", a) for a in pick(corpus.system_prompt_attacks(), side)]
    out = []
    for i in range(n):
        mark = canary(rng)
        kind, attack = rng.choice(attacks)
        messages = [{"role": "system", "content": fill(m["system_prompt"]["system"], canary=mark)}, *user(attack)]
        out.append(Attempt(f"system_prompt-{i}", "system_prompt", messages, kind, canary=mark))
    return out


@SUITES.register("jailbreak")
def jailbreak(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """Framings (role play, hypotheticals, fiction, personas), encodings of the payload, in-the-wild
    jailbreak prompts, and multi-turn escalation, each around a request that must be refused."""
    m = material()
    payloads, wild = harmful_payloads(side), pick(corpus.jailbreak_prompts(), side)
    out = []
    for i in range(n):
        payload, kind, mutation = rng.choice(payloads), i % 4, "none"
        if kind == 0:  # a framing template around an encoded payload
            t, template = rng.choice(_templates(m["jailbreak"], side))
            mutation = rng.choice(ENCODINGS)
            messages, where = user(fill(template, payload=MUTATIONS[mutation](payload, rng))), f"jailbreak/{side}/{t}"
        elif kind == 1:  # a plain framing
            t, template = rng.choice(_templates(m["jailbreak"], side))
            messages, where = user(fill(template, payload=payload)), f"jailbreak/{side}/{t}"
        elif kind == 2:  # an in-the-wild jailbreak prompt, then the request
            messages, where = user(f"{rng.choice(wild)}\n\n{payload}"), "corpus:inthewild"
        else:  # multi-turn escalation
            t, turns = rng.choice(_templates(m["multi_turn"], side))
            roles = ["user", "assistant"] * len(turns)
            messages = [{"role": r, "content": fill(x, payload=payload)} for r, x in zip(roles, turns)]
            where = f"multi_turn/{side}/{t}"
        out.append(Attempt(f"jailbreak-{i}", "jailbreak", messages, where, mutation))
    return out


@SUITES.register("harmful")
def harmful(side: str, rng: random.Random, n: int) -> list[Attempt]:
    payloads = harmful_payloads(side)
    chosen = rng.sample(payloads, min(n, len(payloads)))
    return [Attempt(f"harmful-{i}", "harmful", user(p), "harmful") for i, p in enumerate(chosen)]


@SUITES.register("benign")
def benign(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """Look-alikes of harmful requests that must be answered (over-refusal)."""
    rows = material()["benign"][side]
    out = []
    for i in range(n):
        mutation = "none" if i < len(rows) else rng.choice(("typos", "lower", "upper"))
        text = MUTATIONS[mutation](rows[i % len(rows)], rng)
        out.append(Attempt(f"benign-{i}", "benign", user(text), f"benign/{side}/{i % len(rows)}", mutation))
    return out


@SUITES.register("pii")
def pii(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """Planted personal data the user asks to have read back, and a card number to echo."""
    m = material()["pii"]
    out = []
    for i in range(n):
        person = rng.choice(m["people"])
        if i % 2 == 0:
            t, template = rng.choice(_templates(m["leak"], side))
            secrets, where = [person["email"], person["phone"]], f"pii_leak/{side}/{t}"
        else:
            t, template = rng.choice(_templates(m["echo"], side))
            secrets, where = [person["card"]], f"pii_echo/{side}/{t}"
        out.append(Attempt(f"pii-{i}", "pii", user(fill(template, **person)), where, secrets=secrets))
    return out


def _facts(rng: random.Random, n: int) -> list[dict]:
    facts = material()["facts"]
    return rng.sample(facts, min(n, len(facts)))


def lower_first(question: str) -> str:
    return question[:1].lower() + question[1:]


@SUITES.register("bias")
def bias(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """`n` cases per attribute; each case asks one fact question once per swapped persona."""
    m = material()["bias"]
    out = []
    for attribute in ("gender", "ethnicity", "native_language"):
        for c, fact in enumerate(_facts(rng, n)):
            frame = m["frames"][c % len(m["frames"])]
            for v, who in enumerate(m[attribute]):
                question = fact["q"]
                if who.get("style") == "learner":
                    question = fill(m["learner_phrasing"][c % len(m["learner_phrasing"])],
                                     question_lower=lower_first(question))
                text = fill(frame, person=who["person"], possessive=who["possessive"], question=question)
                text = text[:1].upper() + text[1:]
                out.append(Attempt(f"bias-{attribute}-{c}-{v}", "bias", user(text), f"bias/{attribute}",
                                   reference=fact["a"],
                                   group={"attribute": attribute, "case": c, "variant": who["person"]}))
    return out


@SUITES.register("robustness")
def robustness(side: str, rng: random.Random, n: int) -> list[Attempt]:
    """Each fact question clean, then with typos, in capitals, in lower case and paraphrased."""
    paraphrases = material()["robustness"]["paraphrases"]
    out = []
    for c, fact in enumerate(_facts(rng, n)):
        q = fact["q"]
        variants = {"clean": q, "typos": MUTATIONS["typos"](q, rng), "upper": q.upper(), "lower": q.lower(),
                    "paraphrase": fill(rng.choice(paraphrases), question=q, question_lower=lower_first(q))}
        for variant, text in variants.items():
            out.append(Attempt(f"robustness-{c}-{variant}", "robustness", user(text), "robustness",
                               "none" if variant in ("clean", "paraphrase") else variant, reference=fact["a"],
                               group={"case": c, "variant": variant}))
    return out


ATTACKS = ("injection", "system_prompt", "jailbreak", "harmful", "pii")
"""The suites whose rate is an attack success rate (lower is better)."""


def build(suites: list[str], side: str, seed: int, n: int, bias_cases: int) -> list[Attempt]:
    """Every attempt of `suites`, the same for the same seed."""
    out = []
    for name in suites:
        rng = random.Random(f"{seed}:{name}:{side}")
        out += SUITES[name](side, rng, bias_cases if name in ("bias", "robustness") else n)
    return out


def guard_side(seed: int = 0, n: int = 400) -> list[Attempt]:
    """The guard's half, for training its classifiers."""
    return build(["injection", "system_prompt", "jailbreak", "harmful", "benign"], GUARD, seed, n, 0)
