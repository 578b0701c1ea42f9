"""The local Ray session: started by the first stage that needs one, stopped by its owner.

A stage that finds no Ray starts a local one sized for itself and stops it when done. Inside
`shared_session(num_cpus)` (a pipeline, a review round) the first stage starts it sized for the
largest stage instead, and it stays up until the block ends: each later stage saves a Ray start
and a shutdown (about 10 s on 2 cores). Joining a cluster (`resources.address`) is not affected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_shared_cpus = 0  # > 0 inside shared_session: the CPUs a local session starts with, kept till the end


def live_nodes() -> int:
    """Live nodes of the connected Ray cluster."""
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def multi_node() -> bool:
    """Whether the connected Ray cluster spans more than one node (roles may sit on different hosts)."""
    return live_nodes() > 1


def start_local(num_cpus: int, runtime_env: dict | None = None) -> bool:
    """Start a local Ray unless one is connected. True when the caller owns it and must stop it."""
    import ray

    if ray.is_initialized():
        return False
    # "local": never attach to another Ray that runs on this machine (joining one is explicit).
    ray.init(address="local", num_cpus=max(num_cpus, _shared_cpus, 1), include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=False)
    return not _shared_cpus


def _connected() -> bool:
    ray = sys.modules.get("ray")  # not imported: not connected (and no import just to ask)
    return ray is not None and ray.is_initialized()


@contextmanager
def shared_session(num_cpus: int) -> Iterator[None]:
    """One local Ray for every stage inside the block, started lazily, stopped at its end."""
    global _shared_cpus
    if _shared_cpus or _connected():  # nested, or someone else's session: theirs to keep
        yield
        return
    _shared_cpus = max(num_cpus, os.cpu_count() or 1)
    try:
        yield
    finally:
        _shared_cpus = 0
        if _connected():
            sys.modules["ray"].shutdown()
