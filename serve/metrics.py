"""Prometheus metrics of one replica, served at /metrics with the vLLM engine's own metrics.

Each replica is its own process, so /metrics (routed to any one replica) shows that replica's
counts; Ray Serve's cluster-wide metrics (`ray_serve_*`) go through Ray's metrics export as usual.
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
