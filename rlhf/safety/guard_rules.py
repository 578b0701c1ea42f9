"""Rule checks of the guardrails, registered by name (`serve.guard_rules`), and the Decision every
check returns. Pure text functions: the Guard (rlhf/safety/guard.py) runs them before its
classifiers, and evaluation can run them offline.

- `length`: a question or conversation over `serve.max_prompt_chars` characters (input).
- `injection`: phrasings that try to override the assistant's instructions, reveal its system
  prompt, or smuggle chat-template role markers (input).
- `pii`: e-mail addresses, phone numbers, credit-card numbers (Luhn-checked) and US social
  security numbers (input and output). Questions are stored for the next training round, so a
  question carrying personal data is refused rather than kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rlhf.config.workflow import ServeConfig
from rlhf.registry import Registry

REFUSALS = {
    "too_long": "I'm sorry, your message is too long for me to handle (the limit is {limit} characters). "
                "Could you shorten it and ask again?",
    "prompt_injection": "I'm sorry, I can't follow instructions that try to change how I work or reveal my "
                        "setup. Please ask your question directly and I'll gladly help.",
    "pii": "I'm sorry, your message seems to contain personal information ({kinds}). Questions are "
           "stored to improve this assistant, so please remove it and ask again.",
    "unsafe_input": "I'm sorry, I can't help with that request. If you have another question, I'm happy to help.",
    "output_pii": "I'm sorry, my answer contained personal information ({kinds}), so I have withheld it.",
    "unsafe_output": "I'm sorry, I can't share that answer. Could you rephrase your question?",
}


@dataclass
class Decision:
    """One guard verdict; `reason` is "ok" or a code from REFUSALS."""

    stage: str  # "input" or "output"
    allowed: bool
    reason: str = "ok"
    detail: str = ""
    score: float | None = None  # classifier probability of "unsafe", when a classifier ran
    limit: int = 0

    @property
    def refusal(self) -> str:
        return REFUSALS[self.reason].format(kinds=self.detail, limit=self.limit)

    def as_dict(self) -> dict:
        return {"blocked": not self.allowed, "stage": self.stage, "reason": self.reason, "detail": self.detail}


# ----------------------------------------------------------------------------- rules

_VERB = r"\b(ignore|disregard|forget|override|bypass|drop)\s+"
_INJECTION = [re.compile(p, re.I | re.M) for p in (
    _VERB + r"(all\s+|any\s+|of\s+)*(the\s+|your\s+|my\s+|these\s+|those\s+)?(previous|prior|above|earlier|"
    r"preceding|foregoing|system|original|initial|existing)\s+(instructions?|prompts?|rules|directions|"
    r"guidelines|messages?|context|commands?)\b",
    _VERB + r"(all\s+)?(of\s+)?your\s+(instructions?|rules|guidelines|programming|training|restrictions|"
    r"safety|filters?|system prompt)\b",
    _VERB + r"(everything|all)\s+(above|before|previous|prior|you('ve| have) been told)\b",
    r"\b(reveal|show|print|repeat|output|leak|tell me|what (is|are|was|were))\b.{0,30}\byour\b.{0,20}"
    r"\b(system|hidden|initial|original|secret)\s+(prompt|instructions?|message|rules)\b",
    r"\b(reveal|show|print|repeat|leak|output|dump)\b.{0,20}\bsystem\s+prompt\b",
    r"\byou are now\b.{0,40}\b(dan|jailbroken|unrestricted|unfiltered|uncensored|evil|free of)\b",
    r"\byou\b.{0,30}\b(developer|dan|god|jailbreak|unrestricted)\s+mode\b",
    r"\bdo anything now\b",
    r"\b(pretend|act|behave|respond)\b.{0,30}\b(no|without)\s+(rules|restrictions|limits|filters|guidelines|"
    r"safety|censorship)\b",
    r"\bact as\b.{0,20}\b(unfiltered|unrestricted|uncensored|jailbroken)\b",
    r"<\|(im_start|im_end|system|endoftext)\|>|\[/?INST\]|<<SYS>>|^\s*#{2,}\s*(system|instruction)s?\s*:",
)]

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Separators are required so that plain numbers (arithmetic questions) never look like phones.
_PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{3}[ .-])\d{3,4}[ .-]\d{4}(?![\w])"
    r"|(?<![\w.])\+\d{1,3}(?:[ .-]\d{2,4}){2,4}(?![\w])"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str) -> list[str]:
    """Kinds of personal data in `text`, e.g. ["email", "phone number"]."""
    kinds = []
    if _EMAIL.search(text):
        kinds.append("email address")
    cards = [m.group(0) for m in _CARD.finditer(text)]
    if any(_luhn(re.sub(r"\D", "", c)) for c in cards):
        kinds.append("credit card number")
    if _SSN.search(text):
        kinds.append("social security number")
    elif _PHONE.search(text):
        kinds.append("phone number")
    return kinds


def find_injection(text: str) -> str:
    """The first matching prompt-injection phrase, or ""."""
    for pattern in _INJECTION:
        match = pattern.search(text)
        if match:
            return match.group(0)[:80]
    return ""


# ----------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class GuardRule:
    """A rule check: each side it guards returns a refusing Decision, or None to let the text pass."""

    on_input: Callable[[str, ServeConfig], Decision | None] | None = None
    on_output: Callable[[str, ServeConfig], Decision | None] | None = None


GUARD_RULES: Registry[GuardRule] = Registry("guard rule")
"""Rule checks by name (`serve.guard_rules`), run in this order."""


def _too_long(text: str, cfg: ServeConfig) -> Decision | None:
    if len(text) > cfg.max_prompt_chars:
        return Decision("input", False, "too_long", f"{len(text)} characters", limit=cfg.max_prompt_chars)
    return None


def _injection(text: str, cfg: ServeConfig) -> Decision | None:
    phrase = find_injection(text)
    return Decision("input", False, "prompt_injection", phrase) if phrase else None


def _pii_in(text: str, cfg: ServeConfig) -> Decision | None:
    kinds = find_pii(text)
    return Decision("input", False, "pii", ", ".join(kinds)) if kinds else None


def _pii_out(text: str, cfg: ServeConfig) -> Decision | None:
    kinds = find_pii(text)
    return Decision("output", False, "output_pii", ", ".join(kinds)) if kinds else None


GUARD_RULES.register("length")(GuardRule(on_input=_too_long))
GUARD_RULES.register("injection")(GuardRule(on_input=_injection))
GUARD_RULES.register("pii")(GuardRule(on_input=_pii_in, on_output=_pii_out))
