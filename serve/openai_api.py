"""Request and response shapes of the QA endpoint, and the one error body every 4xx carries.

Requests are pydantic models in strict mode (a string is not an int, a bool is not a number),
so a wrongly typed field is a 400 that names it instead of a silent conversion. Unknown fields
are ignored, as OpenAI clients send options we do not use. Responses are plain dicts in the
OpenAI wire format: the `openai` client parses them, and building them costs nothing.

Extensions beyond the OpenAI API, all optional: `ignore_eos` and `min_tokens` (as in vLLM's
server, used by the benchmark), and a `guardrail` object on a refused answer.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ApiError(Exception):
    """An error the client caused (or a 503 while the engine is down), sent as OpenAI's body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = _STRICT
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # multi-part content: the text parts
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class _Sampling(BaseModel):
    """Options shared by chat completions, completions and /ask."""

    model_config = _STRICT
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop


class ChatCompletionRequest(_Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None

    @model_validator(mode="after")
    def _has_user_text(self):
        if not any(m.role == "user" and m.text().strip() for m in self.messages):
            raise ValueError("messages: need at least one user message with non-empty content")
        return self


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("exactly one prompt per request is supported")
            prompt = prompt[0]
        if not prompt.strip():
            raise ValueError("prompt is empty")
        return prompt


class AskRequest(_Sampling):
    question: str

    @field_validator("question")
    @classmethod
    def _not_empty(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("question is empty")
        return question


class FeedbackRequest(BaseModel):
    """Feedback on one answer: any of a rating, a thumb, a preference between two answers to the
    same question, or a corrected answer (each becomes its own feedback row)."""

    model_config = _STRICT
    id: str = Field(min_length=1)
    rating: int | None = Field(None, ge=1, le=5)
    thumbs: Literal["up", "down"] | None = None
    other_id: str | None = None
    preferred: str | None = None
    correction: str | None = None
    comment: str | None = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _something_given(self):
        if self.rating is None and self.thumbs is None and self.preferred is None and self.correction is None:
            raise ValueError("give at least one of rating (1-5), thumbs (up/down), preferred (with "
                             "other_id) or correction")
        if self.preferred is not None:
            if not self.other_id:
                raise ValueError("preferred needs other_id: the second answer of the comparison")
            if self.other_id == self.id:
                raise ValueError("other_id must differ from id")
            if self.preferred not in (self.id, self.other_id):
                raise ValueError("preferred must be id or other_id")
        if self.correction is not None and not self.correction.strip():
            raise ValueError("correction is empty")
        return self


# ----------------------------------------------------------------------------- parsing


def _location(loc: tuple) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content' (type tags of unions dropped)."""
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not _TYPE_TAG.search(str(item)):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none)$|[\[(]")


def validation_error(exc: ValidationError) -> ApiError:
    """The first few field problems in one message; `param` names the first field."""
    lines, seen, params = [], set(), []
    for err in exc.errors(include_url=False):
        where = _location(err["loc"])
        if where in seen:  # each member of a union reports; one line per field is enough
            continue
        seen.add(where)
        params.append(where)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"missing field '{where}'")
        else:
            lines.append(f"{where}: {msg}" if where else msg)
    return ApiError(400, "; ".join(lines[:4]), param=(params[0] or None) if params else None, code="invalid_value")


def check_content_type(content_type: str) -> None:
    """JSON bodies only: application/json (or a +json type); none given is read as JSON too."""
    media = content_type.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, f"content type '{media}' is not supported; send application/json",
                       code="unsupported_media_type")


def parse_json(raw: bytes, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {max_bytes}", code="body_too_large")
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        detail = (f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                  else str(exc))
        raise ApiError(400, f"request body is not valid JSON: {detail}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def parse_model(cls: type[BaseModel], body: dict) -> Any:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


# ----------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(rid: str, model: str, text: str, finish_reason: str, use: dict,
                    guardrail: dict | None = None) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if guardrail:
        message["refusal"] = text
    out = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
           "usage": use}
    if guardrail:
        out["guardrail"] = guardrail
    return out


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def completion(rid: str, model: str, text: str, finish_reason: str, use: dict,
               guardrail: dict | None = None) -> dict:
    out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
           "usage": use}
    if guardrail:
        out["guardrail"] = guardrail
    return out


def completion_chunk(rid: str, model: str, created: int, text: str, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(rid: str, model: str, created: int, obj: str, use: dict) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
