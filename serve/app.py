"""The QA endpoint's Serve deployment: the FastAPI ingress (routes, error bodies) and `QAServer`,
the replica class; each replica holds a vLLM async engine.

Routes (FastAPI ingress):
  POST /v1/chat/completions, POST /v1/completions   OpenAI-compatible, `stream: true` over SSE
  POST /ask        {"question"} -> {"id", "answer", "finish_reason"}
  POST /feedback   rating 1-5, thumbs, preferred of two, or a correction, by answer id
  GET  /v1/models, GET /healthz (open), GET /metrics (open, Prometheus)
  GET  /admin/stats, GET /admin/decisions?limit=N   (admin key)
  GET  /review (the review page, static), GET /review/items, POST /review/items/{id},
       GET /review/agreement   (reviewer or admin key; serve/review_api.py, rlhf/review_store.py)

A request flows: key check -> JSON and field checks -> context-window check -> input guard ->
engine -> output guard -> answer and guard decisions recorded in SQLite -> response. Client
mistakes are 4xx with OpenAI's error body; a failing engine is a 503 and the replica's health
check (which asks the engine) fails, so Serve replaces it.

Start it with `rlhf serve --model PATH`, or `serve run serve/serve_config.yaml` /
`serve deploy serve/serve_config.yaml` (import path `serve.application:build_app`, which binds
this deployment with its options; serve/application.py). The request and answer records and the
SSE chunk format live in serve/answers.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from functools import partial

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from rlhf.config.tree import from_dict
from rlhf.human.feedback import FeedbackError
from rlhf.human.review_store import ReviewError
from rlhf.safety.guard import Guard
from rlhf.safety.guard_rules import Decision
from serve import feedback_service, metrics, review_api
from serve.answers import Answer, Job, StreamFormat, answer_record, new_id
from serve.auth import KeyChecker, RateLimiter, key_label
from serve.engine import Completion, QAEngine
from serve.guard_batch import BatchedInputGuard
from serve.openai_api import (
    SSE_DONE,
    ApiError,
    AskRequest,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_completion,
    check_content_type,
    completion,
    parse_json,
    parse_model,
    sse,
    usage,
)

log = logging.getLogger("ray.serve")
MAX_BODY_BYTES = 4 << 20

api = FastAPI(title="rlhf QA endpoint", version="1")
api.add_middleware(metrics.MetricsMiddleware)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": str(exc.status_code)}},
                        status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    return JSONResponse(ApiError(400, f"invalid request: {exc.errors()[:3]}").body(), status_code=400)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception):
    # A bug, not the client's fault: still a JSON body, and the replica keeps serving.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": {"message": f"internal error ({type(exc).__name__})", "type": "server_error",
                                   "param": None, "code": "internal_error"}}, status_code=500)


# Serve pickles the class when it is decorated: everything it uses must be defined above.
@serve.deployment(name="qa")
@serve.ingress(api)
class QAServer(BatchedInputGuard):
    def __init__(self, model_path: str, config: dict, feedback_db=None):
        cfg = from_dict(config)
        self.cfg, self.s = cfg, cfg.serve
        self.auth = KeyChecker(self.s.api_keys, self.s.admin_keys)
        self.limiter = RateLimiter(self.s.rate_limit_per_minute, self.s.rate_limit_burst)
        self.guard = Guard(self.s)
        # Answers, feedback and reviews: this replica's own SQLite connection, or `feedback_db`,
        # the handle of the one FeedbackDB deployment when replicas span nodes (serve/feedback_service.py).
        self.db = feedback_service.connect(self.s.feedback_db, feedback_db)
        self.reviewer_keys = review_api.ReviewerKeys(self.s.reviewer_keys, self.auth.admin_keys)
        self.engine = QAEngine(model_path, cfg)
        self.model_path = model_path
        self.live = metrics.LIVE = metrics.VersionMetrics()  # per-version series for `rlhf monitor`
        # What /healthz reports about this replica: after Serve replaced a dead one, a new id and
        # a start time later than the death say when service came back, and the gap.
        self.replica = {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                        "node_id": ray.get_runtime_context().get_node_id(),
                        "feedback_store": "actor" if feedback_db is not None else "file",
                        "started_at": round(time.time() - self.engine.start_seconds, 3),
                        "ready_at": round(time.time(), 3)}
        log.info("QA replica ready: engine started in %.1f s", self.engine.start_seconds)

    async def reconfigure(self, user_config: dict) -> None:
        """Serve's in-place update, sent when the registry's live version changes (serve/run.py):
        {"model_path", "version"}. The new engine starts beside the old one, which keeps answering
        until the swap and then drains its in-flight requests before it stops."""
        path, version = user_config.get("model_path") or self.model_path, str(user_config.get("version") or "")
        if path == self.model_path:
            self.engine.version = self.live.version = version
            return
        started = time.perf_counter()
        engine = await asyncio.to_thread(QAEngine, path, self.cfg)
        engine.version = version
        old, self.engine, self.model_path = self.engine, engine, path
        self.live.version = version
        log.info("swapped to %s (%s) in %.1f s; draining the old engine", version, path, time.perf_counter() - started)
        await old.drain_and_shutdown()

    def served(self, engine: QAEngine) -> str:
        """The model name with the engine's version, as stored with every answer it wrote (and so
        with every feedback row on it)."""
        return f"{self.s.model_name}@{engine.version}" if engine.version else self.s.model_name

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy."""
        await self.engine.check_health()
        await self.db("ping")

    def __del__(self):
        # Serve calls this when it stops the replica: take the engine's process down with it.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()

    # ------------------------------------------------------------------ routes

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        req = await self._parse(request, ChatCompletionRequest)
        self._check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = self.engine.encode_chat(messages)
        users = [m["content"] for m in messages if m["role"] == "user"]
        job = Job(new_id("chatcmpl"), "chat", users[-1], messages, ids,
                  self.engine.sampling(req, len(ids), "messages"), messages)
        if req.stream:
            return self._sse(self._stream(job, "chat", req.stream_options))
        ans = await self._answer(job)
        return chat_completion(job.id, self.s.model_name, ans.text, ans.finish_reason, self._usage(job, ans),
                               ans.guardrail)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        req = await self._parse(request, CompletionRequest)
        self._check_model(req.model)
        ids = self.engine.encode_text(req.prompt)
        job = Job(new_id("cmpl"), "completions", req.prompt, [{"role": "user", "content": req.prompt}], ids,
                  self.engine.sampling(req, len(ids), "prompt"))
        if req.stream:
            return self._sse(self._stream(job, "completions", req.stream_options))
        ans = await self._answer(job)
        return completion(job.id, self.s.model_name, ans.text, ans.finish_reason, self._usage(job, ans),
                          ans.guardrail)

    @api.post("/ask")
    async def ask(self, request: Request):
        req = await self._parse(request, AskRequest)
        if req.stream:
            raise ApiError(400, "/ask does not stream; use /v1/chat/completions with stream: true", param="stream")
        ids = self.engine.encode_question(req.question)
        job = Job(new_id("ans"), "ask", req.question, [{"role": "user", "content": req.question}], ids,
                  self.engine.sampling(req, len(ids), "question", temperature=self.s.ask_temperature))
        ans = await self._answer(job)
        out = {"id": job.id, "answer": ans.text, "finish_reason": ans.finish_reason, "model": ans.model}
        if ans.guardrail:
            out["guardrail"] = ans.guardrail
        return out

    @api.post("/feedback")
    async def feedback(self, request: Request):
        req = await self._parse(request, FeedbackRequest)
        fields = req.model_dump(exclude={"id"})
        try:
            rows = await self.db("add_feedback", req.id, **fields)
        except FeedbackError as exc:
            code = "answer_not_found" if exc.status == 404 else "invalid_value"
            raise ApiError(exc.status, str(exc), param=exc.param, code=code) from None
        kinds = [k for k, f in (("rating", "rating"), ("thumbs", "thumbs"), ("preference", "preferred"),
                                ("correction", "correction")) if fields[f] is not None]
        for kind in kinds:
            metrics.FEEDBACK.labels(kind).inc()
        answer = await self.db("get_answer", req.id)
        self.live.feedback_rows(metrics.version_of(answer["model"]),
                                [f"thumbs_{req.thumbs}" if k == "thumbs" else k for k in kinds])
        return {"id": req.id, "stored": kinds, "feedback_ids": rows}

    @api.get("/v1/models")
    async def models(self, request: Request):
        self.auth.check(request.headers)
        return {"object": "list", "data": [{"id": self.s.model_name, "object": "model", "created": 0,
                                            "owned_by": "rlhf", "max_model_len": self.engine.max_model_len,
                                            "version": self.engine.version}]}

    @api.get("/healthz")
    async def healthz(self):
        try:
            await self.check_health()
        except Exception as exc:  # report, do not raise: a probe wants a status code
            return JSONResponse({"status": "unhealthy", "error": str(exc)}, status_code=503)
        return {"status": "ok", "model": self.s.model_name, "version": self.engine.version, **self.replica}

    @api.get("/metrics")
    async def prometheus(self):
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/admin/stats")
    async def admin_stats(self, request: Request):
        self.auth.check_admin(request.headers)
        return await self.db("stats")

    @api.get("/admin/decisions")
    async def admin_decisions(self, request: Request):
        self.auth.check_admin(request.headers)
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise ApiError(400, f"limit must be an integer 1-1000, got {raw!r}", param="limit")
        return {"data": await self.db("recent_decisions", int(raw))}

    @api.get("/review")
    async def review_page(self):
        return self._static(review_api.PAGE)

    @api.get("/review/static/{name}")
    async def review_asset(self, name: str):
        return self._static(name)

    @api.get("/review/items")
    async def review_items(self, request: Request):
        reviewer = self.reviewer_keys.reviewer(request.headers)
        limit = review_api.query_limit(request.query_params.get("limit"))
        return await self.db("queue_for", reviewer, limit)

    @api.post("/review/items/{item_id}")
    async def review_submit(self, item_id: str, request: Request):
        reviewer = self.reviewer_keys.reviewer(request.headers)
        req = parse_model(review_api.ReviewRequest, parse_json(await request.body(), MAX_BODY_BYTES))
        ratings = req.ratings.model_dump() if req.ratings else None
        try:
            review_id = await self.db("submit", item_id, reviewer, ratings, req.preferred, req.correction,
                                      req.comment)
        except ReviewError as exc:
            raise ApiError(exc.status, str(exc), param=exc.param, code=exc.code) from None
        progress = await self.db("queue_for", reviewer, 0)
        return {"item_id": item_id, "review_id": review_id, "reviewer": reviewer, "done": progress["done"],
                "left": progress["left"]}

    @api.get("/review/agreement")
    async def review_agreement(self, request: Request):
        self.reviewer_keys.reviewer(request.headers)
        return await self.db("agreement")

    # ------------------------------------------------------------------ the flow

    async def _answer(self, job: Job) -> Answer:
        """Input guard, engine, output guard, record: the whole non-streamed request."""
        engine = self.engine  # the answer is this engine's, even if a swap happens meanwhile
        verdict = await self._input_guard(job.guard_turns)
        if not verdict.allowed:
            return await self._refuse(job, [verdict], engine=engine)
        gen = await engine.generate(job.ids, job.params, job.id)
        out = await self._guard(partial(self.guard.check_output, question=job.prompt), gen.text,
                                self.guard.output_model)
        if not out.allowed:
            return await self._refuse(job, [verdict, out], gen, engine)
        ans = Answer(gen.text, gen.finish_reason, gen, None)
        await self._record(job, ans, [verdict, out], engine)
        return ans

    async def _stream(self, job: Job, kind: str, options) -> AsyncIterator[str]:
        """SSE events of one streamed answer. Rules check the growing text; a hit ends the stream
        with finish_reason content_filter. The output classifier judges the finished text."""
        fmt, engine = StreamFormat(job.id, self.s.model_name, kind), self.engine
        verdict = await self._input_guard(job.guard_turns)
        if not verdict.allowed:
            ans = await self._refuse(job, [verdict], engine=engine)
            yield fmt.delta(ans.text)
            yield fmt.end("content_filter", ans.guardrail)
            yield SSE_DONE
            return
        started, text, finish, produced, out = time.perf_counter(), "", "stop", 0, None
        yield fmt.start()
        try:
            async for delta, finished, produced in engine.stream(job.ids, job.params, job.id):
                check = self.guard.output_rules(text[-64:] + delta)  # PII spans are short: a window suffices
                if not check.allowed:
                    out, finish = check, "content_filter"
                    break
                if delta:
                    if not text:
                        metrics.FIRST_TOKEN.observe(time.perf_counter() - started)
                        self.live.first_token.observe(time.perf_counter() - started, {"version": engine.version})
                    text += delta
                    yield fmt.delta(delta)
                finish = finished or finish
        except ApiError as exc:  # the status line has gone out already: the error travels as an event
            yield sse(exc.body())
            yield SSE_DONE
            return
        if out is None:
            out = await self._guard(partial(self.guard.check_output, question=job.prompt), text,
                                    self.guard.output_model)
            finish = finish if out.allowed else "content_filter"
        gen = Completion(text, finish, len(job.ids), produced)
        ans = Answer(text if out.allowed else out.refusal, finish, gen, None if out.allowed else out.as_dict())
        await self._record(job, ans, [verdict, out], engine)
        yield fmt.end(finish, ans.guardrail)
        if options is not None and options.include_usage:
            yield fmt.usage(self._usage(job, ans))
        yield SSE_DONE

    async def _refuse(self, job: Job, decisions: list[Decision], gen: Completion | None = None,
                      engine: QAEngine | None = None) -> Answer:
        blocked = decisions[-1]
        ans = Answer(blocked.refusal, "content_filter", gen, blocked.as_dict())
        await self._record(job, ans, decisions, engine or self.engine)
        return ans

    async def _record(self, job: Job, ans: Answer, decisions: list[Decision], engine: QAEngine) -> None:
        ans.model = self.served(engine)
        rec = answer_record(job, ans, ans.model)
        for d in decisions:
            metrics.GUARD.labels(d.stage, d.reason).inc()
        metrics.TOKENS.labels("prompt").inc(rec.prompt_tokens)
        metrics.TOKENS.labels("completion").inc(rec.completion_tokens)
        self.live.answer(engine.version, ans.guardrail is not None, time.perf_counter() - job.started,
                         rec.prompt_tokens, rec.completion_tokens, decisions)
        await self.db("record_answer", rec, decisions)

    # ------------------------------------------------------------------ helpers

    async def _parse(self, request: Request, model):
        key = self.auth.check(request.headers)
        self.limiter.check(key_label(key) if key else f"client:{request.client.host if request.client else ''}")
        check_content_type(request.headers.get("content-type", ""))
        req = parse_model(model, parse_json(await request.body(), MAX_BODY_BYTES))
        if len(getattr(req, "messages", ())) > self.s.max_messages:
            raise ApiError(400, f"messages: {len(req.messages)} messages; at most {self.s.max_messages} per request "
                           "(serve.max_messages)", param="messages", code="too_many_messages")
        return req

    def _check_model(self, name: str) -> None:
        if name != self.s.model_name:
            raise ApiError(404, f"model '{name}' does not exist; this server serves '{self.s.model_name}'",
                           param="model", code="model_not_found")

    async def _guard(self, check, text, classifier) -> Decision:
        # Rules are microseconds; a classifier forward pass runs off the event loop.
        return await asyncio.to_thread(check, text) if classifier is not None else check(text)

    @staticmethod
    def _static(name: str) -> Response:
        body, media = review_api.static_file(name)
        return Response(body, media_type=media, headers=review_api.PAGE_HEADERS)

    @staticmethod
    def _usage(job: Job, ans: Answer) -> dict:
        return usage(len(job.ids), ans.gen.completion_tokens if ans.gen else 0)

    @staticmethod
    def _sse(events: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
