"""Rule rewards: plain functions of a response, registered by name, combined with weights.

Every rule has the signature

    rule(response: str, reference: str | None, *, prompt="", choices=None, n_tokens=None,
         target_length=32) -> float

and reads only the context it needs. `combine` runs the rules named in a weights mapping
(`reward.rules` in the config) and returns the weighted total plus each rule's raw score under
`reward/<rule>`. Standard library only, so reward actors and tests need nothing else.

Departures from the usual definitions, on purpose:
  - exact_match also credits a response whose *extracted* final answer matches (\\boxed{},
    `####`, "the answer is", "Answer:"), or, when the reference is a number and no answer marker
    is present, whose last number matches. Numbers compare by value ("1,000" == "1000",
    "3.0" == "3"). A reference written as a worked solution ("... #### 72") is reduced to its
    final answer first.
  - token_f1 is SQuAD's F1, taking the better of the whole response and its extracted answer,
    so a correct answer inside a sentence is not diluted by the sentence.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from rlhf.registry import Registry, UnknownName

Rule = Callable[..., float]
RULES: Registry[Rule] = Registry("reward rule")
"""`rule(response, reference, **context) -> float` by name (`reward.rules` keys)."""
CONTEXT_KEYS = ("prompt", "choices", "n_tokens", "target_length")
"""Keyword context a rule may read; `combine` rejects any other key so typos fail loudly."""


# ----------------------------------------------------------------------------- text utilities

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?![\d])")
_NUMBER_ONLY = re.compile(rf"^{_NUMBER}$")
_FRACTION = re.compile(r"^(-?\d+)\s*/\s*(\d+)$")


def parse_number(text: str) -> float | None:
    """The value of a string that is just a number, else None.

    Accepts thousands separators ("1,000"), signs, decimals, a simple fraction ("3/4"), and
    ignores a currency sign, a percent sign, LaTeX `\\$`, and a trailing full stop.
    """
    s = text.strip().replace("\\$", "").replace("$", "").replace("%", "").strip()
    s = s.rstrip(".").strip()
    if _NUMBER_ONLY.match(s):
        return float(s.replace(",", ""))
    frac = _FRACTION.match(s)
    if frac and int(frac.group(2)) != 0:
        return int(frac.group(1)) / int(frac.group(2))
    return None


def last_number(text: str) -> str | None:
    """The last number written in `text` (as written, e.g. "1,000"), or None."""
    found = _NUMBER_RE.findall(text)
    return found[-1] if found else None


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (so \\boxed{\\frac{1}{2}} works)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unclosed: the response was cut off mid-answer


_MARKERS = [
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"answer\s+is\s*:?\s*([^\n]+)", re.IGNORECASE),
    re.compile(r"answer\s*:\s*([^\n]+)", re.IGNORECASE),
]


def _clean_span(span: str) -> str:
    """Trim an answer span to its first sentence and strip wrapping punctuation/markup."""
    span = re.split(r"\.\s", span, maxsplit=1)[0]  # "1,000. Because..." -> "1,000"; "3.5" stays
    previous = None
    while span != previous:  # "**42**." needs markup and punctuation stripped in turn
        previous = span
        span = span.strip().strip("*_`").rstrip(".!?;:,")
    return span


def extract_answer(text: str) -> str | None:
    """The final answer a response states explicitly, or None.

    Looks, in order, for \\boxed{...}, `#### X`, "the answer is X" and "Answer: X"; the last
    occurrence of the first marker found wins (models often restate the answer at the end).
    """
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    for pattern in _MARKERS:
        hits = pattern.findall(text)
        if hits:
            answer = _clean_span(hits[-1])
            if answer:
                return answer
    return None


def _numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


# Words that may trail a numeric answer without changing it ("1,000 dollars").
_UNITS = ("dollars", "dollar", "cents", "percent", "units", "degrees", "meters", "hours")


def _as_number(answer: str) -> float | None:
    """A number, possibly followed by a unit word ("1,000 dollars"), as its value."""
    value = parse_number(answer)
    if value is None:
        inner = last_number(answer)
        rest = normalize_answer(answer.replace(inner, "")) if inner is not None else None
        if rest is not None and (rest == "" or rest in _UNITS):
            value = parse_number(inner)
    return value


def numeric_answer(text: str) -> float | None:
    """The numeric value of a response's answer: its extracted answer (a number, optionally
    with a unit word), else the last number in the text; None when there is none."""
    answer = extract_answer(text)
    if answer is not None:
        return _as_number(answer)
    tail = last_number(text)
    return parse_number(tail) if tail is not None else None


def _answers_match(answer: str, reference: str) -> bool:
    """Equal values when both are numbers, else equal normalised text.

    Numbers never compare as text: normalisation drops the decimal point, and "3.5" must not
    equal "35".
    """
    a, b = _as_number(answer), parse_number(reference)
    if a is not None and b is not None:
        return _numbers_equal(a, b)
    gold = normalize_answer(reference)
    return bool(gold) and normalize_answer(answer) == gold


def token_f1_score(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two strings after `normalize_answer`."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- rules


@RULES.register("exact_match")
def exact_match(response: str, reference: str | None, **_: object) -> float:
    """1.0 if the response, or its extracted final answer, equals the reference, else 0.0."""
    if reference is None:
        return 0.0
    gold = extract_answer(reference) or reference.strip()
    if _answers_match(response.strip(), gold):
        return 1.0
    answer = extract_answer(response)
    if answer is not None:
        return float(_answers_match(answer, gold))
    gold_value = parse_number(gold)
    tail = last_number(response)
    if gold_value is not None and tail is not None:
        # No answer marker: the last number stated is the model's answer to a numeric question.
        value = parse_number(tail)
        return float(value is not None and _numbers_equal(value, gold_value))
    return 0.0


@RULES.register("token_f1")
def token_f1(response: str, reference: str | None, **_: object) -> float:
    """SQuAD token F1 against the reference (the better of response and extracted answer)."""
    if reference is None:
        return 0.0
    score = token_f1_score(response, reference)
    answer = extract_answer(response)
    if answer is not None:
        score = max(score, token_f1_score(answer, reference))
    return score


_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])(?:\s|$)")


def _picked_letter(response: str) -> str | None:
    """The option letter a response commits to: "B", "(B)", "B.", "Answer: B", "B) Paris"."""
    for candidate in (extract_answer(response), response.strip()):
        if candidate:
            m = _LETTER_ONLY.match(candidate.strip())
            if m:
                return m.group(1).upper()
    m = _LEADING_LETTER.match(response)
    return (m.group(1) or m.group(2)) if m else None


def _picked_choice_text(response: str, choices: Sequence[str]) -> int | None:
    """Index of the one choice whose text the response gives, or None if none or several."""
    norm = [normalize_answer(c) for c in choices]
    for candidate in (extract_answer(response), response):
        if candidate and normalize_answer(candidate) in norm:
            return norm.index(normalize_answer(candidate))
    said = normalize_answer(response)
    hits = [i for i, c in enumerate(norm) if c and re.search(rf"\b{re.escape(c)}\b", said)]
    return hits[0] if len(hits) == 1 else None  # naming several options is no answer


def _letter_index(letter: str | None) -> int | None:
    return ord(letter.upper()) - ord("A") if letter else None


@RULES.register("choice")
def choice(
    response: str, reference: str | None, *, choices: Sequence[str] | None = None, **_: object
) -> float:
    """Closed-ended questions: 1.0 if the response picks the correct option, else 0.0.

    The reference is the correct letter ("B", "(B)") or the correct choice's text; the response
    may answer by letter or by the choice's text. Without `choices`, only letters compare.
    """
    if reference is None:
        return 0.0
    correct = _letter_index(_picked_letter(reference))
    if choices:
        if correct is None or correct >= len(choices):
            correct = _picked_choice_text(reference, choices)
        picked = _letter_index(_picked_letter(response))
        if picked is None or picked >= len(choices):
            picked = _picked_choice_text(response, choices)
    else:
        picked = _letter_index(_picked_letter(response))
    return float(correct is not None and picked == correct)


@RULES.register("length")
def length(
    response: str,
    reference: str | None,
    *,
    n_tokens: int | None = None,
    target_length: int = 32,
    **_: object,
) -> float:
    """-|n - target| / target clipped to [-1, 0]: 0 at the target length, -1 at 0 or 2x.

    `n_tokens` is the tokenizer count when the caller has it; whitespace words otherwise.
    """
    if target_length <= 0:
        raise ValueError(f"target_length must be positive, got {target_length}")
    n = n_tokens if n_tokens is not None else len(response.split())
    return max(-1.0, -abs(n - target_length) / target_length)


_CLEAN_END = set(".!?)]}\"'`*") | set("。！？")


def _is_repetitive(response: str, n: int = 4, times: int = 3) -> bool:
    """Any word n-gram occurring `times` or more: the usual sign of a degenerate loop."""
    words = response.lower().split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(count >= times for count in grams.values())


def _ends_cleanly(response: str) -> bool:
    last = response.rstrip()[-1:]
    return bool(last) and (last in _CLEAN_END or last.isdigit())


@RULES.register("format")
def format_(response: str, reference: str | None, **_: object) -> float:
    """Well-formedness: 0.0 if empty; else 1.0 minus 0.5 for a repeated 4-gram (>= 3 times)
    and minus 0.5 for an unclean ending (not punctuation or a digit, i.e. likely truncated)."""
    if not response.strip():
        return 0.0
    return 1.0 - 0.5 * _is_repetitive(response) - 0.5 * (not _ends_cleanly(response))


@RULES.register("numeric")
def numeric(response: str, reference: str | None, **_: object) -> float:
    """Share of the response's non-space characters that are digits (0..1).

    A dense format term for numeric QA (arithmetic answers are numbers); it also gives tiny
    random policies a reward they can climb within a few steps, which the RL tests rely on.
    """
    chars = [c for c in response if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


# ----------------------------------------------------------------------------- combining


def validate_rules(weights: Mapping[str, float]) -> None:
    """Raise ValueError naming the valid rules if `weights` names an unknown one."""
    unknown = [name for name in weights if name not in RULES]
    if unknown:
        raise UnknownName(f"unknown reward rule(s) {', '.join(map(repr, unknown))}; valid: {', '.join(RULES)}")
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"reward rule '{name}' has a non-finite weight {weight!r}")


def combine(
    response: str, reference: str | None, weights: Mapping[str, float], **ctx: object
) -> tuple[float, dict[str, float]]:
    """Weighted sum of the named rules -> (total, {"reward/<rule>": raw score}).

    Components are the unweighted scores, so logs stay comparable when weights change.
    `ctx` is passed to every rule; keys outside CONTEXT_KEYS raise TypeError.
    """
    validate_rules(weights)
    extra = set(ctx) - set(CONTEXT_KEYS)
    if extra:
        raise TypeError(f"unknown reward context {sorted(extra)}; valid: {', '.join(CONTEXT_KEYS)}")
    components: dict[str, float] = {}
    total = 0.0
    for name, weight in weights.items():
        score = float(RULES[name](response, reference, **ctx))
        components[f"reward/{name}"] = score
        total += weight * score
    return total, components
