"""The endpoint's way to the feedback database, one file for every replica wherever it runs.

`serve.feedback_store` chooses:
- `file`: each replica opens the SQLite file itself (WAL; replicas on one machine share it).
- `actor`: one `FeedbackDB` Serve deployment on the head node owns the file, and every replica,
  on any node, sends it its reads and writes. Feedback is acknowledged only after that
  deployment committed it with an fsync, so nothing acknowledged is lost, and a node of its own
  never keeps a second database.
- `auto`: `actor` when the Ray cluster has more than one node when the app is deployed, else
  `file` (one hop fewer). Set `actor` on a cluster that adds nodes later.

Both sides expose the same calls: `await feedback("add_feedback", answer_id, rating=5)`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from rlhf.human.feedback import FeedbackStore
from rlhf.human.review_store import ReviewStore

STORE_CALLS = ("ping", "record_answer", "get_answer", "add_feedback", "stats", "recent_decisions")
REVIEW_CALLS = ("queue_for", "submit", "agreement")
HEAD_NODE = {"node:__internal_head__": 0.001}  # Ray's resource that only the head node has


class FeedbackService:
    """The database calls the endpoint makes, on one connection (calls run one at a time)."""

    def __init__(self, path: str):
        self.store = FeedbackStore(path)
        self.reviews = ReviewStore(self.store)

    def run(self, call: str, *args, **kwargs):
        if call in STORE_CALLS:
            return getattr(self.store, call)(*args, **kwargs)
        if call in REVIEW_CALLS:
            return getattr(self.reviews, call)(*args, **kwargs)
        raise ValueError(f"unknown feedback call {call!r}")


class LocalFeedback:
    """`file`: the replica's own connection, on one writer thread (SQLite commits and their
    fsync never block the event loop)."""

    def __init__(self, path: str):
        self.service = FeedbackService(path)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-db")

    async def __call__(self, call: str, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.service.run(call, *args, **kwargs))


class RemoteFeedback:
    """`actor`: the calls go to the FeedbackDB deployment; its errors come back as they were
    raised there (a FeedbackError keeps its status and field)."""

    def __init__(self, handle):
        self.handle = handle

    async def __call__(self, call: str, *args, **kwargs):
        from ray.exceptions import RayTaskError

        try:
            return await self.handle.run.remote(call, *args, **kwargs)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else None
            if cause is None:
                raise
            raise cause from None


@serve.deployment(name="feedback-db", num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": HEAD_NODE},
                  max_ongoing_requests=256)
class FeedbackDB:
    """The one owner of the feedback file when replicas span nodes. Sync methods run one at a
    time on the replica's loop, so writes are serialised as on a single connection."""

    def __init__(self, path: str):
        self.service = FeedbackService(path)

    def run(self, call: str, *args, **kwargs):
        return self.service.run(call, *args, **kwargs)

    def check_health(self) -> None:
        self.service.store.ping()


def connect(path: str, handle=None):
    """The replica's feedback client: through `handle` (a FeedbackDB deployment) when given,
    else its own connection to `path`."""
    return RemoteFeedback(handle) if handle is not None else LocalFeedback(path)
