"""API keys: user keys for the QA and feedback routes, admin keys for the admin routes.

Keys come from `serve.api_keys` / `serve.admin_keys` and from the environment variables
RLHF_API_KEYS / RLHF_ADMIN_KEYS (comma-separated), read where the replica runs, so secrets
need not be written into a config file. A client sends `Authorization: Bearer <key>` (what the
`openai` client does) or `X-API-Key: <key>`. With no user keys configured at all the QA routes
are open; admin routes always need an admin key and are off when none is configured. An admin
key is also a valid user key. /healthz and /metrics are open (probes and scrapers).

Keys are compared in constant time against every configured key and never logged: a log line
or metric names a key only by `key_label` (the first 8 hex digits of its SHA-256).
`RateLimiter` gives each key (each client address when keys are off) a token bucket; past it, a
429 with `Retry-After`. The bucket lives in the replica, so with N replicas a key gets up to N
times the rate.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time

from serve.openai_api import ApiError

API_KEYS_ENV = "RLHF_API_KEYS"
ADMIN_KEYS_ENV = "RLHF_ADMIN_KEYS"


def keys_from(configured: list[str], env_var: str) -> tuple[str, ...]:
    env = [k.strip() for k in os.environ.get(env_var, "").split(",")]
    return tuple(dict.fromkeys(k for k in [*configured, *env] if k and k.strip()))


def _matches(key: str, keys: tuple[str, ...]) -> bool:
    # Compare against every key so timing does not tell which prefix matched.
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def request_key(headers) -> str:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


class KeyChecker:
    def __init__(self, api_keys: list[str], admin_keys: list[str]):
        self.admin_keys = keys_from(admin_keys, ADMIN_KEYS_ENV)
        self.api_keys = keys_from(api_keys, API_KEYS_ENV)

    @property
    def open(self) -> bool:
        return not self.api_keys

    def check(self, headers) -> str:
        """The request's key ("" when none); 401 unless it is a valid user (or admin) key, or
        keys are off."""
        key = request_key(headers)
        if self.open:
            return key
        if not key:
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not (_matches(key, self.api_keys) or _matches(key, self.admin_keys)):
            raise _unauthorized("invalid API key")
        return key

    def check_admin(self, headers) -> None:
        if not self.admin_keys:
            raise ApiError(403, f"admin routes are disabled: set serve.admin_keys or {ADMIN_KEYS_ENV}",
                           type="permission_error", code="admin_disabled")
        key = request_key(headers)
        if not key:
            raise _unauthorized("missing admin key: send 'Authorization: Bearer <admin key>'")
        if not _matches(key, self.admin_keys):
            if _matches(key, self.api_keys):
                raise ApiError(403, "this key may not use admin routes", type="permission_error",
                               code="not_admin")
            raise _unauthorized("invalid admin key")


def key_label(key: str) -> str:
    """How a key appears anywhere outside the request: a short hash, never the key."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8] if key else "anonymous"


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute on average, `burst` at once.
    per_minute 0 turns it off."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = per_minute / 60.0, max(1, burst), clock
        self.buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, time)
        self.lock = threading.Lock()

    def check(self, caller: str) -> None:
        """Take one token for `caller` or raise 429 saying when the next one comes."""
        if self.rate <= 0:
            return
        with self.lock:
            now = self.clock()
            tokens, then = self.buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self.buckets[caller] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise ApiError(429, f"rate limit exceeded: {self.rate * 60:g} requests a minute (burst "
                               f"{self.burst}); retry in {wait} s", type="rate_limit_error",
                               code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
            self.buckets[caller] = (tokens - 1.0, now)
