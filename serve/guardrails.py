"""Guardrails on the way in (questions) and out (answers): rule checks, then small classifiers.

Rules (chosen by `serve.guard_rules`):
- `length`: a question or conversation over `serve.max_prompt_chars` characters (input).
- `injection`: phrasings that try to override the assistant's instructions, reveal its system
  prompt, or smuggle chat-template role markers (input).
- `pii`: e-mail addresses, phone numbers, credit-card numbers (Luhn-checked) and US social
  security numbers (input and output). Questions are stored for the next training round, so a
  question carrying personal data is refused rather than kept.

Classifiers (optional, `serve.input_guard` / `serve.output_guard`): a sequence classifier with
labels 0 = safe, 1 = unsafe, trained by `rlhf guard train` (serve/guard_train.py); a text is
blocked when its unsafe probability exceeds `serve.guard_threshold`.

Every check returns a Decision, allowed or not; the app logs every one. A blocked request gets
a polite refusal that names its reason code.

Streamed answers are checked by the rules as the text grows and the stream stops at the first
hit (finish_reason `content_filter`); text sent before the hit has left already, so the tail
of a PII match may have been streamed. The output classifier judges a stream once it is complete.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import ServeConfig

RULES = ("length", "injection", "pii")

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


# ----------------------------------------------------------------------------- classifiers


class GuardClassifier:
    """A safe/unsafe sequence classifier (label 1 = unsafe) on CPU."""

    def __init__(self, folder: str | Path, max_length: int = 256):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.max_length = max_length
        self._lock = threading.Lock()  # one forward pass at a time keeps torch threads sane

    def unsafe_probability(self, texts: list[str]) -> list[float]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with self._lock, self.torch.inference_mode():
            logits = self.model(**enc).logits
        return logits.float().softmax(-1)[:, 1].tolist()


class Guard:
    """Rule checks plus the optional classifiers, as configured in `serve`."""

    def __init__(self, cfg: ServeConfig):
        unknown = set(cfg.guard_rules) - set(RULES)
        if unknown:
            raise ValueError(f"serve.guard_rules: unknown rule(s) {sorted(unknown)} (valid: {', '.join(RULES)})")
        self.rules = set(cfg.guard_rules)
        self.max_chars = cfg.max_prompt_chars
        self.threshold = cfg.guard_threshold
        self.input_model = GuardClassifier(cfg.input_guard) if cfg.input_guard else None
        self.output_model = GuardClassifier(cfg.output_guard) if cfg.output_guard else None

    def input_rules(self, text: str) -> Decision:
        if "length" in self.rules and len(text) > self.max_chars:
            return Decision("input", False, "too_long", f"{len(text)} characters", limit=self.max_chars)
        if "injection" in self.rules:
            phrase = find_injection(text)
            if phrase:
                return Decision("input", False, "prompt_injection", phrase)
        if "pii" in self.rules:
            kinds = find_pii(text)
            if kinds:
                return Decision("input", False, "pii", ", ".join(kinds))
        return Decision("input", True)

    def output_rules(self, text: str) -> Decision:
        if "pii" in self.rules:
            kinds = find_pii(text)
            if kinds:
                return Decision("output", False, "output_pii", ", ".join(kinds))
        return Decision("output", True)

    def check_input(self, text: str) -> Decision:
        """Rules first (cheap); the classifier only sees what the rules let through."""
        decision = self.input_rules(text)
        if decision.allowed and self.input_model is not None:
            return self._classify(self.input_model, text, "input", "unsafe_input")
        return decision

    def check_output(self, text: str) -> Decision:
        decision = self.output_rules(text)
        if decision.allowed and self.output_model is not None and text.strip():
            return self._classify(self.output_model, text, "output", "unsafe_output")
        return decision

    def _classify(self, model: GuardClassifier, text: str, stage: str, reason: str) -> Decision:
        score = model.unsafe_probability([text])[0]
        if score > self.threshold:
            return Decision(stage, False, reason, f"unsafe probability {score:.2f}", score=score)
        return Decision(stage, True, score=score)

    @property
    def has_classifier(self) -> bool:
        return self.input_model is not None or self.output_model is not None
