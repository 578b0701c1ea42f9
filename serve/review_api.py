"""The review page's HTTP side: who a reviewer is, what a review request looks like, and the
page's static files.

Reviewers sign in with a key of their own (`serve.reviewer_keys`, name -> key, or
RLHF_REVIEWER_KEYS=name=key,name=key): the key says who they are, so the store can refuse a
second review of an item by the same person. An admin key opens the review routes too, as
reviewer `admin`. With neither kind of key configured the review routes are off (403).

The page (`GET /review`: plain HTML, CSS and JavaScript, no build step) holds no data and needs
no key; everything it shows comes from the JSON routes behind the key. The key comes from its
sign-in form (kept in sessionStorage for the tab) or from a link `/review?token=KEY`, which the
page removes from the address bar at once.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serve.auth import request_key
from serve.openai_api import ApiError

REVIEWER_KEYS_ENV = "RLHF_REVIEWER_KEYS"
STATIC = Path(__file__).parent / "static"
PAGE = "review.html"
ASSETS = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
# No inline code on the page: everything may come from this server only. No referrer, so a
# `?token=` in the address never travels anywhere.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

_STRICT = ConfigDict(strict=True, extra="forbid")


class Ratings(BaseModel):
    model_config = _STRICT
    accuracy: int = Field(ge=1, le=5)
    relevance: int = Field(ge=1, le=5)
    clarity: int = Field(ge=1, le=5)
    helpfulness: int = Field(ge=1, le=5)


class ReviewRequest(BaseModel):
    """A rating of a `rate` item, or the better answer of a `compare` item; either may add a
    corrected answer and a comment. Unknown fields are errors: a misspelt field must not be
    silently dropped from a review."""

    model_config = _STRICT
    ratings: Ratings | None = None
    preferred: str | None = None
    correction: str | None = Field(None, max_length=20000)
    comment: str | None = Field(None, max_length=4000)


def reviewer_keys(configured: dict[str, str]) -> dict[str, str]:
    """name -> key from the config, then from RLHF_REVIEWER_KEYS (name=key,name=key)."""
    keys = {name: key for name, key in configured.items() if key}
    for entry in os.environ.get(REVIEWER_KEYS_ENV, "").split(","):
        name, _, key = entry.strip().partition("=")
        if name.strip() and key.strip():
            keys[name.strip()] = key.strip()
    return keys


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


class ReviewerKeys:
    def __init__(self, configured: dict[str, str], admin_keys: tuple[str, ...]):
        self.keys = reviewer_keys(configured)
        self.admin_keys = admin_keys

    def reviewer(self, headers) -> str:
        """The reviewer a request comes from; 401/403 unless it carries a reviewer or admin key."""
        if not self.keys and not self.admin_keys:
            raise ApiError(403, f"review routes are disabled: set serve.reviewer_keys or {REVIEWER_KEYS_ENV}",
                           type="permission_error", code="review_disabled")
        key = request_key(headers)
        if not key:
            raise _unauthorized("missing reviewer key: sign in with your key ('Authorization: Bearer <key>')")
        found = None
        # Compare against every key so timing does not tell which one matched.
        for name, candidate in [*self.keys.items(), *(("admin", k) for k in self.admin_keys)]:
            if hmac.compare_digest(key.encode(), candidate.encode()) and found is None:
                found = name
        if found is None:
            raise _unauthorized("invalid reviewer key")
        return found


def query_limit(raw: str | None, default: int = 50) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 500:
        raise ApiError(400, f"limit must be an integer 0-500, got {raw!r}", param="limit")
    return int(raw)


def static_file(name: str) -> tuple[bytes, str]:
    """(bytes, media type) of the page or one of its assets; 404 for any other name."""
    media = "text/html; charset=utf-8" if name == PAGE else ASSETS.get(name)
    if media is None:
        raise ApiError(404, f"no review asset '{name}'", type="not_found_error", code="not_found")
    return (STATIC / name).read_bytes(), media
