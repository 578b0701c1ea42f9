"""Guardrails on the way in (questions) and out (answers): rule checks, then small classifiers.

Rules (chosen by `serve.guard_rules`) live in rlhf/safety/guard_rules.py.

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

import threading
from pathlib import Path

from rlhf.config.workflow import ServeConfig
from rlhf.registry import UnknownName
from rlhf.safety.guard_rules import GUARD_RULES, Decision

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
        unknown = sorted(set(cfg.guard_rules) - set(GUARD_RULES))
        if unknown:
            raise UnknownName(f"serve.guard_rules: unknown rule(s) {unknown}; valid: {', '.join(GUARD_RULES)}")
        self.cfg = cfg
        # In registry order, whatever order the config lists them in.
        self.rules = [rule for name, rule in GUARD_RULES.items() if name in cfg.guard_rules]
        self.max_chars = cfg.max_prompt_chars
        self.threshold = cfg.guard_threshold
        self.input_model = GuardClassifier(cfg.input_guard) if cfg.input_guard else None
        self.output_model = GuardClassifier(cfg.output_guard) if cfg.output_guard else None

    def input_rules(self, text: str) -> Decision:
        return self._rules(text, "input")

    def output_rules(self, text: str) -> Decision:
        return self._rules(text, "output")

    def _rules(self, text: str, side: str) -> Decision:
        for rule in self.rules:
            check = rule.on_input if side == "input" else rule.on_output
            decision = check(text, self.cfg) if check is not None else None
            if decision is not None:
                return decision
        return Decision(side, True)

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
