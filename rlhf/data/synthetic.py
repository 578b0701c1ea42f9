"""Generated support-desk QA: `synth:<domain>?split=train|eval` sources, made offline.

Each question carries its context passage (a product sheet of four facts: the one asked about
and three others), so the answer must be read, not remembered: every product is invented, with
random facts. Questions are open-ended (a number
or a word from the sheet), yes/no, or pick-one-of-the-options. The product names are split
between `train` and `eval` by a hash of the name, so the held-out questions share no product,
and so no question, with any training question, by construction.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from rlhf.data.readers import DataError
from rlhf.registry import Registry

SYNTHETIC: Registry[Callable[[random.Random], dict]] = Registry("synthetic QA domain")
"""Domains by name (`synth:<name>`); each draws one {question, reference, type} row."""

SPLITS = ("train", "eval")
EVAL_SHARE = 4  # one product name in EVAL_SHARE belongs to the eval split

_SYLLABLES = ("ka", "lo", "ven", "tor", "mi", "zu", "ra", "pel", "dax", "ori", "sen", "qui", "bel", "nor", "tas",
              "fen", "gol", "ix", "umo", "ser")
_KINDS = ("cordless vacuum", "smart kettle", "e-reader", "air purifier", "desk lamp", "coffee grinder",
          "wireless speaker", "fitness band", "baby monitor", "robot mower")
_COLOURS = ("black", "white", "teal", "red", "silver", "yellow", "navy", "green")
_SYSTEMS = ("Android", "iOS", "Windows", "Linux")
_CHANNELS = ("email", "chat", "phone")
_MONTHS = (3, 6, 12, 18, 24, 36, 48)  # yes/no warranty thresholds: some below and some above every warranty


def product_name(rng: random.Random) -> str:
    base = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{base} {rng.choice('ABCDEFGHKMNPRSTVXZ')}{rng.randint(1, 99)}"


def split_of(name: str) -> str:
    return "eval" if zlib.crc32(name.encode()) % EVAL_SHARE == 0 else "train"


def _facts(rng: random.Random) -> dict:
    works = rng.sample(_SYSTEMS, rng.randint(1, 3))
    return {"kind": rng.choice(_KINDS), "price": rng.randrange(19, 400, 5), "warranty": rng.choice((6, 12, 18, 24, 36)),
            "battery": rng.randint(2, 40), "returns": rng.choice((14, 30, 45, 60, 90)), "colour": rng.choice(_COLOURS),
            "works": works, "channel": rng.choice(_CHANNELS)}


SHEET_FACTS = 4  # lines per sheet: the one asked about and three others, shuffled


def _sheet(name: str, f: dict, asked: str, rng: random.Random) -> str:
    lines = {"price": f"It costs {f['price']} dollars.",
             "warranty": f"Its warranty lasts {f['warranty']} months.",
             "battery": f"Its battery lasts {f['battery']} hours.",
             "returns": f"It can be returned within {f['returns']} days.",
             "colour": f"It is sold in {f['colour']} only.",
             "works": f"Its app works with {' and '.join(f['works'])}.",
             "channel": f"Support is by {f['channel']}."}
    shown = [asked, *rng.sample([k for k in lines if k != asked], SHEET_FACTS - 1)]
    rng.shuffle(shown)
    article = "an" if f["kind"][0] in "aeiou" else "a"
    return f"Product sheet: The {name} is {article} {f['kind']}. " + " ".join(lines[k] for k in shown)


def _open(name: str, f: dict, rng: random.Random) -> tuple[str, str, str]:
    asks = [(f"How many months of warranty does the {name} come with?", str(f["warranty"]), "warranty"),
            (f"How much does the {name} cost, in dollars?", str(f["price"]), "price"),
            (f"How many hours does the battery of the {name} last?", str(f["battery"]), "battery"),
            (f"Within how many days can the {name} be returned?", str(f["returns"]), "returns"),
            (f"In which colour is the {name} sold?", f["colour"], "colour"),
            (f"How can customers reach support for the {name}?", f["channel"], "channel")]
    question, answer, asked = rng.choice(asks)
    return f"{question} Answer with the value from the sheet only.", answer, asked


def _yes_no(name: str, f: dict, rng: random.Random) -> tuple[str, str, str]:
    """Half the answers are yes, for each kind of question, so no constant answer scores above
    chance: the sheet has to be read."""
    truth = rng.random() < 0.5
    asked = rng.choice(("works", "colour", "warranty"))
    if asked == "works":
        system = rng.choice(f["works"] if truth else [s for s in _SYSTEMS if s not in f["works"]])
        question = f"Does the app of the {name} work with {system}?"
    elif asked == "colour":
        colour = f["colour"] if truth else rng.choice([c for c in _COLOURS if c != f["colour"]])
        question = f"Is the {name} sold in {colour}?"
    else:
        months = rng.choice([m for m in _MONTHS if (m < f["warranty"]) == truth])
        question = f"Is the warranty of the {name} longer than {months} months?"
    return f"{question} Answer yes or no.", "yes" if truth else "no", asked


def _choice(name: str, f: dict, rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        options = rng.sample([c for c in _COLOURS if c != f["colour"]], 3) + [f["colour"]]
        question, answer, asked = f"Which colour is the {name} sold in?", f["colour"], "colour"
    else:
        options = rng.sample([c for c in _CHANNELS if c != f["channel"]], 2) + [f["channel"]]
        question, answer, asked = f"How can customers reach support for the {name}?", f["channel"], "channel"
    rng.shuffle(options)
    return f"{question} Options: {', '.join(options)}. Answer with one of the options.", answer, asked


_ASKERS = {"open": _open, "yes_no": _yes_no, "choice": _choice}


@SYNTHETIC.register("support")
def support_question(rng: random.Random, split: str = "train") -> dict:
    """One product-sheet question of the given split: open, yes/no or multiple choice."""
    name = product_name(rng)
    while split_of(name) != split:
        name = product_name(rng)
    facts = _facts(rng)
    kind = rng.choice(tuple(_ASKERS))
    question, answer, asked = _ASKERS[kind](name, facts, rng)
    return {"question": f"{_sheet(name, facts, asked, rng)}\n\n{question}", "reference": answer, "type": kind}


def parse_synthetic(spec: str) -> tuple[str, str]:
    """`support?split=eval` -> ("support", "eval"), or a DataError naming what is valid."""
    name, _, query = spec.partition("?")
    options = dict(part.partition("=")[::2] for part in filter(None, query.split("&")))
    unknown = sorted(set(options) - {"split"})
    if name not in SYNTHETIC:
        raise DataError(f"synth:{spec}: unknown domain '{name}'; valid: {', '.join(SYNTHETIC)}")
    if unknown:
        raise DataError(f"synth:{spec}: unknown option(s) {', '.join(unknown)}; valid: split")
    split = options.get("split", "train")
    if split not in SPLITS:
        raise DataError(f"synth:{spec}: split must be one of {', '.join(SPLITS)}, got '{split}'")
    return name, split


def synthetic_rows(spec: str, size: int, seed: int) -> list[dict]:
    """`size` rows {question, reference, type} of `synth:<spec>`, the same for the same seed."""
    name, split = parse_synthetic(spec)
    rng = random.Random(f"{name}/{split}/{seed}")
    return [SYNTHETIC[name](rng, split) for _ in range(size)]
