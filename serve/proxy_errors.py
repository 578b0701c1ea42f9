"""What Ray Serve's HTTP proxy says when a replica dies under a request.

Every answer the QA app gives, errors included, comes from the replica (serve/app.py). When the
replica itself is gone (kill -9, OOM, a lost node), the proxy gets a `RayActorError` and, for
that, sends no response at all: uvicorn then answers a bare `500 Internal Server Error`, and a
stream that had started just stops. A lost replica is not the client's fault and not a bug: Serve
replaces it and requests sent meanwhile wait in Serve's router for the new one, so the honest
answer is "unavailable, retry".

`ReplicaLostMiddleware` runs inside the proxy (Ray Serve loads the `middlewares` list below from
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy_errors:middlewares`, which `rlhf serve`
sets for the Ray it starts; serve/run.py). It watches what the proxy sends; when the proxy is done
and has sent nothing, the client gets a 503 with `Retry-After` and the OpenAI-style JSON error
body the app uses; when a server-sent-event stream was cut short, the stream gets an error event
and `[DONE]` so an SSE client sees why it ended. Complete responses pass through untouched.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware

RETRY_AFTER_S = 1
LOST = {"error": {"message": "the replica serving this request stopped before answering; retry the request",
                  "type": "server_error", "param": None, "code": "replica_unavailable"}}


class ReplicaLostMiddleware:
    """Pure ASGI middleware: a 503 (or a closing SSE error event) where the proxy answered nothing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = {"started": False, "ended": False, "sse": False}

        async def watching(message):
            if message["type"] == "http.response.start":
                sent["started"] = True
                sent["sse"] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                  for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception:
            if sent["ended"]:
                raise
        if not sent["ended"]:
            await _finish(send, sent)


async def _finish(send, sent: dict) -> None:
    try:
        if not sent["started"]:
            body = json.dumps(LOST).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(RETRY_AFTER_S).encode())]})
            await send({"type": "http.response.body", "body": body})
        elif sent["sse"]:
            await send({"type": "http.response.body", "body": f"data: {json.dumps(LOST)}\n\ndata: [DONE]\n\n".encode()})
        else:
            await send({"type": "http.response.body", "body": b""})
    except Exception:  # the client has gone away: nothing left to tell it
        pass


def middlewares() -> list[Middleware]:
    """The proxy's extra middlewares (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(ReplicaLostMiddleware)]
