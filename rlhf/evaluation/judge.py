"""An LLM judge behind any OpenAI-compatible endpoint (`rlhf serve`, `vllm serve`, a hosted API)
that rates each held-out answer 1-5 on the review page's four aspects: accuracy, relevance,
clarity and helpfulness (rlhf.evaluation.metrics.ASPECTS), so automatic and human ratings read
on one scale. Set `eval.judge_url` (and `eval.judge_model`; empty: the endpoint's first model);
the key comes from RLHF_JUDGE_API_KEY.

A reply that does not give all four ratings as `aspect: N` lines is kept as unparsed (its text
is in the per-question record) and left out of the means, which say how many answers they
cover.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from rlhf.evaluation.metrics import ASPECTS

PROMPT = ("Rate an assistant's answer to a question. The reference answer is correct.\n\n"
          "QUESTION:\n{question}\n\nREFERENCE ANSWER:\n{reference}\n\nASSISTANT'S ANSWER:\n{answer}\n\n"
          "Rate the assistant's answer from 1 (worst) to 5 (best) on each aspect: accuracy (is it "
          "correct?), relevance (does it answer what was asked?), clarity (is it clear and well "
          "written?), helpfulness (would it help the person who asked?). Reply with exactly four "
          "lines:\naccuracy: N\nrelevance: N\nclarity: N\nhelpfulness: N")
_RATING = {a: re.compile(rf"\b{a}\b\W{{0,5}}([1-5])\b", re.IGNORECASE) for a in ASPECTS}


def judge_client(base_url: str, model: str = "", timeout: float = 60.0):
    """(OpenAI client, model id) for an OpenAI-compatible endpoint; the key is RLHF_JUDGE_API_KEY."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get("RLHF_JUDGE_API_KEY", "none"), timeout=timeout,
                    max_retries=2)
    return client, model or client.models.list().data[0].id


def parse_ratings(text: str) -> dict[str, int] | None:
    """{aspect: 1-5} when the reply rates all four aspects, else None."""
    found = {a: pattern.search(text or "") for a, pattern in _RATING.items()}
    return {a: int(m.group(1)) for a, m in found.items()} if all(found.values()) else None


def judge_summary(ratings: Sequence[dict[str, int] | None]) -> dict:
    """Mean rating per aspect over the parsed replies, how many were parsed and how many not."""
    parsed = [r for r in ratings if r is not None]
    means = {a: (sum(r[a] for r in parsed) / len(parsed) if parsed else None) for a in ASPECTS}
    return {**means, "judged": len(parsed), "unparsed": len(ratings) - len(parsed)}


class AnswerJudge:
    """Rates (question, reference, answer) triples through the endpoint, a few at a time."""

    def __init__(self, base_url: str, model: str = "", concurrency: int = 4, max_tokens: int = 40):
        self.client, self.model = judge_client(base_url, model)
        self.concurrency, self.max_tokens = concurrency, max_tokens

    def rate(self, question: str, reference: str, answer: str) -> tuple[dict[str, int] | None, str]:
        """-> (ratings or None, the judge's reply)."""
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0.0, max_tokens=self.max_tokens,
            messages=[{"role": "user", "content": PROMPT.format(question=question, reference=reference,
                                                                answer=answer)}])
        text = reply.choices[0].message.content or ""
        return parse_ratings(text), text

    def rate_all(self, questions: Sequence[str], references: Sequence[str], answers: Sequence[str],
                 log: Callable[[str], None] = print) -> list[tuple[dict[str, int] | None, str]]:
        """Every answer rated, in order; progress every tenth of the way."""
        step = max(1, len(answers) // 10)
        out: list = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            for i, result in enumerate(pool.map(self.rate, questions, references, answers), 1):
                out.append(result)
                if i % step == 0 or i == len(answers):
                    log(f"judge {self.model}: {i}/{len(answers)} answers rated")
        return out
