"""The proxy middleware that turns a dead replica's silence into a 503 (serve/proxy_errors.py),
driven as the proxy's uvicorn drives it: an ASGI call whose inner app stands in for Serve's proxy
(a real replica death is in tests/serve/test_serve.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.proxy_errors import LOST, ReplicaLostMiddleware, middlewares

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _call(inner) -> list[dict]:
    """Messages the client receives when `inner` (the proxy) handles one POST."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    asyncio.run(ReplicaLostMiddleware(inner)(scope, receive, send))
    return sent


def _headers(message: dict) -> dict:
    return {k.decode(): v.decode() for k, v in message["headers"]}


async def _silent(scope, receive, send):
    """Serve's proxy after a RayActorError: it logs and returns without a response."""


async def _raises(scope, receive, send):
    raise RuntimeError("the proxy's own failure")


@pytest.mark.parametrize("proxy", [_silent, _raises], ids=["nothing-sent", "proxy-raised"])
def test_a_request_answered_by_nobody_gets_a_503_with_retry_after_and_a_json_error(proxy):
    start, body = _call(proxy)
    assert start["status"] == 503
    headers = _headers(start)
    assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body["body"])
    error = json.loads(body["body"])["error"]
    assert error["code"] == "replica_unavailable" and error["type"] == "server_error"
    assert body.get("more_body", False) is False


def test_a_stream_cut_short_ends_with_an_error_event_and_done():
    async def cut(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b'data: {"x": 1}\n\n', "more_body": True})

    messages = _call(cut)
    assert [m.get("more_body", False) for m in messages[1:]] == [True, False]
    events = [e for e in messages[-1]["body"].decode().split("\n\n") if e]
    assert json.loads(events[0].removeprefix("data: ")) == LOST and events[1] == "data: [DONE]"


def test_a_plain_response_cut_short_is_closed_without_inventing_content():
    async def cut(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"par', "more_body": True})

    messages = _call(cut)
    assert messages[-1] == {"type": "http.response.body", "body": b""}


@pytest.mark.parametrize("status", [200, 400, 500])
def test_complete_responses_pass_through_untouched(status):
    async def whole(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    assert _call(whole) == [
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]},
        {"type": "http.response.body", "body": b"ok", "more_body": False}]


def test_an_error_after_a_complete_response_is_not_hidden():
    async def done_then_fail(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        raise RuntimeError("late")

    with pytest.raises(RuntimeError, match="late"):
        _call(done_then_fail)


def test_the_proxy_loads_it_through_ray_serves_callback_check():
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    (loaded,) = validate_http_proxy_callback_return(middlewares())
    assert loaded.cls is ReplicaLostMiddleware
