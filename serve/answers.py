"""One generation request and its answer: the `Job` and `Answer` records the QA replica passes
along, what the feedback store keeps of an answer, and the SSE chunk format of a streamed answer."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from rlhf.human.feedback import AnswerRecord
from serve.engine import Completion
from serve.openai_api import chat_chunk, completion_chunk, sse, usage_chunk


@dataclass
class Job:
    """One generation request, whichever route it came in on."""

    id: str
    route: str  # ask, chat or completions
    prompt: str  # what gets recorded as the question
    guard_turns: list[dict]  # what the input guard reads: every turn of a chat (system, user, assistant, tool)
    ids: list[int]
    params: object  # vllm.SamplingParams
    messages: list | None = None
    started: float = field(default_factory=time.perf_counter)  # when the request was read


@dataclass
class Answer:
    text: str
    finish_reason: str
    gen: Completion | None
    guardrail: dict | None  # set when the guard refused
    model: str = ""  # name@version of the weights that wrote it (set when recorded)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def answer_record(job: Job, ans: Answer, model_name: str) -> AnswerRecord:
    """What the store keeps of an answer. A refusal after generation (the output guard) keeps
    the model's own text as `withheld`, for reviewers; the user only ever saw the refusal."""
    gen = ans.gen
    return AnswerRecord(job.id, job.route, model_name, job.prompt, ans.text, ans.finish_reason,
                        blocked=ans.guardrail["reason"] if ans.guardrail else None, messages=job.messages,
                        prompt_tokens=len(job.ids), completion_tokens=gen.completion_tokens if gen else 0,
                        withheld=gen.text if ans.guardrail and gen is not None else None)


class StreamFormat:
    """SSE events in the chunk format of chat completions or of completions."""

    def __init__(self, rid: str, model: str, kind: str):
        self.rid, self.model, self.kind, self.created = rid, model, kind, int(time.time())

    def start(self) -> str:
        if self.kind == "chat":
            return sse(chat_chunk(self.rid, self.model, self.created, {"role": "assistant", "content": ""}, None))
        return sse(completion_chunk(self.rid, self.model, self.created, "", None))

    def delta(self, text: str) -> str:
        if self.kind == "chat":
            return sse(chat_chunk(self.rid, self.model, self.created, {"content": text}, None))
        return sse(completion_chunk(self.rid, self.model, self.created, text, None))

    def end(self, finish: str, guardrail: dict | None) -> str:
        chunk = (chat_chunk(self.rid, self.model, self.created, {}, finish) if self.kind == "chat"
                 else completion_chunk(self.rid, self.model, self.created, "", finish))
        if guardrail:
            chunk["guardrail"] = guardrail
        return sse(chunk)

    def usage(self, use: dict) -> str:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return sse(usage_chunk(self.rid, self.model, self.created, obj, use))
