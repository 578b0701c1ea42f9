"""The endpoint's numbers, two ways.

`/metrics` (Prometheus text, with the vLLM engine's own metrics): the counts of the one replica
the request reached. `VersionMetrics`: the same numbers tagged with the model version that
produced them, recorded through Ray's metrics API, so every replica on every node reports to its
node's metrics agent and the series add up across the cluster; `rlhf monitor`
(rlhf/lifecycle/monitor.py) reads them from every node and compares them with the version's
evaluation baseline.
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

OWN = CollectorRegistry(auto_describe=True)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/ask", "/feedback", "/v1/models", "/healthz",
          "/metrics", "/admin/stats", "/admin/decisions", "/review", "/review/items", "/review/agreement")

REQUESTS = Counter("rlhf_serve_requests", "HTTP requests by route and status code.", ["route", "status"], registry=OWN)
LATENCY = Histogram("rlhf_serve_request_seconds", "Time to the end of the response, by route.", ["route"],
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=OWN)
FIRST_TOKEN = Histogram("rlhf_serve_time_to_first_token_seconds", "Streamed requests: time to the first chunk.",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=OWN)
TOKENS = Counter("rlhf_serve_tokens", "Prompt and completion tokens.", ["kind"], registry=OWN)
GUARD = Counter("rlhf_serve_guard_decisions", "Guard decisions by stage and reason (ok = allowed).",
                ["stage", "reason"], registry=OWN)
FEEDBACK = Counter("rlhf_serve_feedback", "Stored feedback rows by kind.", ["kind"], registry=OWN)
ANSWER_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60]
FIRST_TOKEN_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
LIVE: VersionMetrics | None = None  # set by the replica (serve/app.py) when it runs under Ray


def version_of(served: str) -> str:
    """'rlhf-qa@v2' -> 'v2' (the name stored with an answer); '' when it names no version."""
    return served.rpartition("@")[2] if "@" in served else ""


class VersionMetrics:
    """Per-version series through Ray's metrics API (exported as ray_rlhf_qa_*). `version` is
    the one the replica serves now (for request counts); answers pass their own engine's."""

    def __init__(self, version: str = ""):
        from ray.util import metrics as ray_metrics

        v, self.version = ("version",), version
        self.requests = ray_metrics.Counter("rlhf_qa_requests", "HTTP requests by version, route and status.",
                                            tag_keys=v + ("route", "status"))
        self.answers = ray_metrics.Counter("rlhf_qa_answers", "Answers by version; outcome answered or blocked "
                                           "(refused by a guard).", tag_keys=v + ("outcome",))
        self.seconds = ray_metrics.Histogram("rlhf_qa_answer_seconds", "Time to a finished answer (guards and "
                                             "engine).", boundaries=ANSWER_BUCKETS, tag_keys=v)
        self.first_token = ray_metrics.Histogram("rlhf_qa_time_to_first_token_seconds", "Streamed answers: time to "
                                                 "the first token.", boundaries=FIRST_TOKEN_BUCKETS, tag_keys=v)
        self.tokens = ray_metrics.Counter("rlhf_qa_tokens", "Prompt and completion tokens.", tag_keys=v + ("kind",))
        self.guard = ray_metrics.Counter("rlhf_qa_guard_decisions", "Guard decisions by stage and reason (ok = "
                                         "allowed).", tag_keys=v + ("stage", "reason"))
        self.feedback = ray_metrics.Counter("rlhf_qa_feedback", "Feedback rows by the version of the answer they "
                                            "are on; kind rating, thumbs_up, thumbs_down, preference, correction.",
                                            tag_keys=v + ("kind",))

    def request(self, route: str, status: int) -> None:
        self.requests.inc(1, {"version": self.version, "route": route, "status": str(status)})

    def answer(self, version: str, blocked: bool, seconds: float, prompt_tokens: int, completion_tokens: int,
               decisions) -> None:
        tags = {"version": version}
        self.answers.inc(1, {**tags, "outcome": "blocked" if blocked else "answered"})
        self.seconds.observe(seconds, tags)
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, {**tags, "kind": "prompt"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, {**tags, "kind": "completion"})
        for d in decisions:
            self.guard.inc(1, {**tags, "stage": d.stage, "reason": d.reason})

    def feedback_rows(self, version: str, kinds: list[str]) -> None:
        for kind in kinds:
            self.feedback.inc(1, {"version": version, "kind": kind})


class MetricsMiddleware:
    """Pure ASGI (streams pass straight through): counts every response, 4xx included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("path", "")
            route = _label(route)
            REQUESTS.labels(route, str(status[0])).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)
            if LIVE is not None:
                LIVE.request(route, status[0])


def render() -> bytes:
    """Our metrics, then whatever the process registered globally (vLLM's engine metrics)."""
    return generate_latest(OWN) + generate_latest(REGISTRY)


def _label(path: str) -> str:
    """The route a path belongs to (one label per review item or asset would grow without end)."""
    if path.startswith("/review/items/"):
        return "/review/items/{id}"
    if path.startswith("/review/static/"):
        return "/review/static"
    return path if path in ROUTES else "other"
