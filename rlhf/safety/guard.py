"""Guardrails on the way in (every chat turn) and out (answers): rule checks, then classifiers.

Rules (chosen by `serve.guard_rules`) live in rlhf/safety/guard_rules.py.

Classifiers (`serve.input_guard` / `serve.output_guard`; `default` is the pair
rlhf/redteam/guard_train.py trains into $RLHF_CACHE/guard, "" turns one off): a
logistic head on all-MiniLM-L6-v2 sentence embeddings (the input classifier's encoder
fine-tuned with it); a text is blocked when its unsafe
probability exceeds `serve.guard_threshold`. The input classifier reads one turn; the output
classifier reads the question beside the answer (its two embeddings side by side), as Llama
Guard judges a response in its conversation: the same words are fine as a refusal or an
answer to a harmless question, and not as help with a harmful request.

Every check returns a Decision, allowed or not; the endpoint logs every one, and red teaming
(rlhf/redteam) runs the same Guard in front of a model folder.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rlhf.config.workflow import ServeConfig
from rlhf.registry import UnknownName
from rlhf.safety.guard_rules import GUARD_RULES, Decision

HEAD_FILE, META_FILE, ENCODER_FILE = "head.safetensors", "guard.json", "encoder.safetensors"
GUARD_FORMAT = 3
"""Bumped when what a classifier reads changes; a default classifier of another format is
trained again (2: the output classifier reads the question beside the answer; 3: the input
classifier brings its own fine-tuned encoder, ENCODER_FILE)."""


def is_guard_folder(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_FILE).is_file() and (Path(folder) / META_FILE).is_file()


def is_current(folder: str | Path) -> bool:
    """A guard folder of this format."""
    return is_guard_folder(folder) and json.loads((Path(folder) / META_FILE).read_text()).get("format") == GUARD_FORMAT


def features(encoder, texts: list[str], questions: list[str] | None = None):
    """[N, D] embeddings of texts, or [N, 2D] of each question beside its answer."""
    import torch

    emb = encoder(texts)
    return emb if questions is None else torch.cat([encoder(questions), emb], dim=1)


class GuardClassifier:
    """Unsafe probability of texts: sigmoid(w · features + b) on the CPU; `pairs`: it reads each
    answer with its question (the output classifier)."""

    def __init__(self, folder: str | Path):
        import torch
        from safetensors.torch import load_file

        from rlhf.evaluation.relevance import SentenceEncoder

        folder = Path(folder)
        if not is_guard_folder(folder):
            raise FileNotFoundError(f"{folder}: not a guard classifier folder (no {HEAD_FILE} and {META_FILE}); "
                                    "train one with `rlhf guard train`")
        self.meta = json.loads((folder / META_FILE).read_text())
        head = load_file(folder / HEAD_FILE)
        self.weight, self.bias = head["weight"], head["bias"]
        self.encoder = SentenceEncoder(self.meta["encoder"])
        if self.meta.get("tuned"):  # the encoder was fine-tuned with the head
            self.encoder.model.load_state_dict(load_file(folder / ENCODER_FILE))
        self.pairs = self.meta.get("inputs") == "question_answer"
        self.torch = torch
        self._lock = threading.Lock()  # one forward pass at a time keeps torch threads sane

    def unsafe_probability(self, texts: list[str], questions: list[str] | None = None) -> list[float]:
        if self.pairs:
            questions = questions if questions is not None else [""] * len(texts)
        with self._lock, self.torch.inference_mode():
            x = features(self.encoder, texts, questions if self.pairs else None)
            return self.torch.sigmoid(x @ self.weight + self.bias).tolist()


def default_folder(side: str) -> Path:
    """Where the default input or output classifier lives ($RLHF_CACHE/guard/<side>)."""
    from rlhf.models.paths import cache_dir

    return cache_dir() / "guard" / side


def _folder(spec: str, side: str) -> Path:
    return default_folder(side) if spec == "default" else Path(spec)


class Guard:
    """Rule checks plus the optional classifiers, as configured in `serve`."""

    def __init__(self, cfg: ServeConfig):
        unknown = sorted(set(cfg.guard_rules) - set(GUARD_RULES))
        if unknown:
            raise UnknownName(f"serve.guard_rules: unknown rule(s) {unknown}; valid: {', '.join(GUARD_RULES)}")
        self.cfg = cfg
        # In registry order, whatever order the config lists them in.
        self.rules = [rule for name, rule in GUARD_RULES.items() if name in cfg.guard_rules]
        self.threshold = cfg.guard_threshold
        self.input_model = GuardClassifier(_folder(cfg.input_guard, "input")) if cfg.input_guard else None
        self.output_model = GuardClassifier(_folder(cfg.output_guard, "output")) if cfg.output_guard else None

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
        return self.check_turns([{"role": "user", "content": text}])

    def check_turns(self, messages: list[dict]) -> Decision:
        """Every turn of a conversation: the rules read all of it (system, user, assistant and
        tool turns); the classifier reads each turn but the system one (the operator's; a
        persona prompt there is normal), and the most unsafe turn decides."""
        verdict, texts = self.prescreen(messages)
        return self.input_verdict(self.input_model.unsafe_probability(texts)) if texts else verdict

    def prescreen(self, messages: list[dict]) -> tuple[Decision, list[str]]:
        """The rules' verdict on a conversation, and the turns the input classifier still has to
        read ([] when the rules decided or there is no classifier). `input_verdict` of their
        scores completes `check_turns`; the endpoint scores many requests' turns in one batch."""
        whole = self.input_rules("\n".join(m["content"] for m in messages))
        if not whole.allowed or self.input_model is None:
            return whole, []
        return whole, [m["content"] for m in messages if m["role"] != "system" and m["content"].strip()]

    def input_verdict(self, scores: list[float]) -> Decision:
        """The input classifier's verdict from the scores of a conversation's turns."""
        return self._verdict(max(scores), "input", "unsafe_input")

    def check_output(self, text: str, question: str = "") -> Decision:
        """The answer: the rules read it; the classifier reads it beside `question`, the user's
        last turn."""
        decision = self.output_rules(text)
        if decision.allowed and self.output_model is not None and text.strip():
            score = self.output_model.unsafe_probability([text], [question])[0]
            return self._verdict(score, "output", "unsafe_output")
        return decision

    def _verdict(self, score: float, stage: str, reason: str) -> Decision:
        if score > self.threshold:
            return Decision(stage, False, reason, f"unsafe probability {score:.2f}", score=score)
        return Decision(stage, True, score=score)

    @property
    def has_classifier(self) -> bool:
        return self.input_model is not None or self.output_model is not None
