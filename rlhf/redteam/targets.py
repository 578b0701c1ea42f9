"""What gets attacked: a model folder (an offline vLLM engine, behind the same Guard the endpoint
runs when guardrails are on) or any OpenAI-compatible chat endpoint (`rlhf serve`, whose
guardrails answer with a `guardrail` field, or `vllm serve`).

Both take a list of chat conversations and return one Response each, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from rlhf.redteam.detectors import Response


class ModelTarget:
    """Greedy answers of a model folder, led by model.system_prompt where a chat brings no system
    turn; `guard` (rlhf.safety.guard.Guard or None) checks every turn on the way in and the
    answer on the way out, as `rlhf serve` does."""

    def __init__(self, model_path: str, cfg, guard=None):
        import dataclasses

        # Jailbreak prompts run long: the engine gets redteam.max_prompt_tokens of context.
        model = dataclasses.replace(cfg.model, max_prompt_tokens=cfg.redteam.max_prompt_tokens)
        self.model_path, self.cfg, self.guard = model_path, dataclasses.replace(cfg, model=model), guard
        self.name = model_path + (" (guarded)" if guard is not None else " (no guardrails)")

    def respond(self, conversations: Sequence[list[dict]], progress: Callable[[int, int], None] | None = None):
        from rlhf.data.prompts import encode_prompt, render_chat, with_system_prompt
        from rlhf.models.loading import load_tokenizer
        from rlhf.models.offline import OfflineEngine

        verdicts = [self._check_in(c) for c in conversations]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        tok = load_tokenizer(self.model_path)
        m = self.cfg.model
        chats = [with_system_prompt(conversations[i], m.system_prompt) for i in todo]
        prompts = [encode_prompt(tok, render_chat(tok, chat, m.chat_template), m.max_prompt_tokens) for chat in chats]
        params = {"temperature": 0.0, "max_tokens": self.cfg.redteam.max_new_tokens}
        texts: dict[int, str] = {}
        if todo:
            with OfflineEngine(self.model_path, self.cfg, self.cfg.redteam.max_new_tokens) as engine:
                for i, samples in zip(todo, engine.sample(prompts, params, use_tqdm=progress is not None)):
                    texts[i] = samples[0].text
        out = []
        for i, verdict in enumerate(verdicts):
            if verdict is not None:
                out.append(Response(verdict.refusal, blocked=verdict.reason))
                continue
            question = conversations[i][-1]["content"]
            answer = self.guard.check_output(texts[i], question) if self.guard is not None else None
            out.append(Response(answer.refusal, blocked=answer.reason) if answer is not None and not answer.allowed
                       else Response(texts[i]))
        return out

    def _check_in(self, conversation: list[dict]):
        if self.guard is None:
            return None
        decision = self.guard.check_turns(conversation)
        return None if decision.allowed else decision


class EndpointTarget:
    """POST /v1/chat/completions on `base_url` (…/v1), `concurrency` requests at a time."""

    def __init__(self, base_url: str, api_key: str = "", model: str = "", max_tokens: int = 64,
                 concurrency: int = 4, timeout: float = 120.0):
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=2)
        self.model = model or self.client.models.list().data[0].id
        self.name = f"{self.base_url} ({self.model})"
        self.max_tokens, self.concurrency = max_tokens, concurrency

    def _one(self, conversation: list[dict]) -> Response:
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=conversation, max_tokens=self.max_tokens, temperature=0.0)
        except Exception as exc:  # an attempt that errors is recorded, not fatal to the run
            return Response("", error=f"{type(exc).__name__}: {exc}"[:300])
        body = raw.http_response.json()
        text = body["choices"][0]["message"].get("content") or ""
        guardrail = body.get("guardrail") or {}
        return Response(text, blocked=guardrail.get("reason", "") if guardrail.get("blocked") else "")

    def respond(self, conversations: Sequence[list[dict]], progress: Callable[[int, int], None] | None = None):
        out: list[Response] = []
        last = time.monotonic()
        with ThreadPoolExecutor(self.concurrency) as pool:
            for response in pool.map(self._one, conversations):
                out.append(response)
                if progress is not None and (time.monotonic() - last > 5 or len(out) == len(conversations)):
                    last = time.monotonic()
                    progress(len(out), len(conversations))
        return out
