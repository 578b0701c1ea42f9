"""What an RL run does when one of its actors dies (kill -9, OOM, a lost node).

- reward and reference actors hold nothing but a frozen model: Ray restarts them in their
  bundle (`max_restarts`) and the trainer sends the call again (`RetryingHandle`);
- a rollout engine holds the policy weights, which the driver still has (the last published
  packet): Ray restarts it in place, the packet is loaded into it again, then the call is sent
  again (actors/launch.py `EngineClient`); the step samples the same tokens, since every
  generate call reseeds the engine. Not so on a GPU transport (nccl, ipc), where the new engine
  would have to join the learner's process group, and the run rebuilds every role;
- learner ranks hold the optimizer state and a process group: when one dies, the whole learner
  group starts again in its bundles, loads the last checkpoint and sends its weights to the
  engines; the other roles keep running (actors/launch.py `_train`, `LearnerGroup.restart`);
- without a checkpoint yet, on a GPU transport, or when a role is lost for good, the run
  rebuilds every role and resumes from the last checkpoint (actors/launch.py `run_training`).

At most `train.max_failures` deaths in all are survived.

Every failure and every recovery is a line of `failures.jsonl` in the run directory: the role,
the node, the error, the step, and the seconds the recovery took. An exception raised inside a
method (a bug, a bad batch) is not retried: it would fail the same way again.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from actors.placement import Placed

RESTARTED_BY_RAY = ("reward", "reference", "rollout")
"""Roles whose actors Ray restarts in place: their state is what __init__ loads, and for a
rollout engine the last published weights, which its client loads again (`restore`)."""


RESTART_WAIT_SECONDS = 300.0
"""How long a call waits for an actor Ray is restarting (model load included) before giving up."""


class ActorFailed(RuntimeError):
    """An actor died or raised; the message names its role and node. `unavailable`: Ray is
    restarting it (a call sent meanwhile fails at once and may be sent again)."""

    def __init__(self, role: str, message: str, died: bool, node: str = "", unavailable: bool = False):
        super().__init__(message)
        self.role, self.died, self.node, self.unavailable = role, died, node, unavailable


def node_of(exc: BaseException) -> str:
    """The node address Ray names in an actor's death notice ("... ip: 10.0.0.5 ..."), or ""."""
    found = re.search(r"\bip: ?([0-9a-fA-F.:]+)", str(exc))
    return found.group(1) if found else ""


def get(role: str, refs):
    """ray.get that names the role when an actor died or raised. For a list of refs it returns
    or raises as soon as one fails, not after all finish: when one learner rank dies, the others
    wait in a collective for it and would never finish."""
    import ray

    try:
        if isinstance(refs, list):
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
        return ray.get(refs)
    except ray.exceptions.RayActorError as exc:
        unavailable = isinstance(exc, ray.exceptions.ActorUnavailableError)
        raise ActorFailed(role, f"{role} actor died: {exc}", died=True, node=node_of(exc),
                          unavailable=unavailable) from None
    except ray.exceptions.RayTaskError as exc:
        raise ActorFailed(role, f"{role} actor failed: {exc}", died=False, node=node_of(exc)) from None


def restart_options(role: str, max_failures: int, gpu_transport: bool = False) -> dict:
    """Ray actor options for `role`: restartable roles come back up to max_failures times; a
    rollout engine on a GPU weight transport does not (the run rebuilds its roles instead)."""
    in_place = role in RESTARTED_BY_RAY and not (role == "rollout" and gpu_transport)
    return {"max_restarts": max_failures} if in_place and max_failures > 0 else {}


class FailureLog:
    """failures.jsonl of a run: one line per failure, one per recovery; `step` is the last
    finished step (kept up to date by the run's progress callback)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "failures.jsonl"
        self.step = 0
        self.count = 0

    def failed(self, exc: ActorFailed, action: str) -> float:
        """Record a death; returns the time it was seen (for `recovered`)."""
        self.count += 1
        self._write({"event": "failed", "failure": self.count, "role": exc.role, "node": exc.node,
                     "step": self.step, "action": action, "error": str(exc).splitlines()[0][:500]})
        return time.time()

    def recovered(self, role: str, since: float, step: int) -> None:
        self._write({"event": "recovered", "failure": self.count, "role": role, "step": step,
                     "seconds": round(time.time() - since, 2)})

    def _write(self, row: dict) -> None:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class Restartable(Placed):
    """Mixed into actors Ray restarts in place: `incarnation` names the process that answers, so
    the driver sees a restart that happened between two calls (no call failed, yet the actor
    died and came back) and logs it like any other."""

    def incarnation(self) -> tuple[int, str]:
        where = self.where()
        return where["pid"], where["ip"]


class RetryingHandle:
    """Turns `actor.method.remote(...)` into a concurrent.futures.Future for the trainer. When
    the actor died and Ray restarts it (`restart_options`), the call is sent again, up to
    `retries` times; each death is logged, also one that fell between two calls. A subclass whose
    actor holds state the run gave it names it in `restores` and brings a restarted actor back in
    `restore` before the call is sent again (also after a death between calls, whose answer came
    from the fresh actor and is dropped)."""

    restores = ""
    """What `restore` gives a restarted actor back (logged with the failure); "": nothing."""

    def __init__(self, role: str, actor, pool: ThreadPoolExecutor, retries: int = 0,
                 failures: FailureLog | None = None):
        self.role, self.actor, self.pool, self.retries, self.failures = role, actor, pool, retries, failures
        self.process: tuple[int, str] | None = None  # (pid, node) that answered the last call
        self.answered = time.time()

    def call(self, method: str, *args) -> Future:
        return self.pool.submit(self._call, method, args)

    def restore(self) -> None:
        """Give a restarted actor the state it held before it died; nothing by default."""

    def _call(self, method: str, args: tuple):
        deaths, since, restore = 0, None, False
        while True:
            try:
                if restore:
                    self.restore()
                    restore = False
                result, process = get(self.role, [getattr(self.actor, method).remote(*args),
                                                  self.actor.incarnation.remote()])
            except ActorFailed as exc:
                if not exc.died:
                    raise
                if exc.unavailable and since is not None and time.time() < since + RESTART_WAIT_SECONDS:
                    time.sleep(0.5)  # still restarting after a death already counted
                    continue
                if not exc.node and self.process is not None:
                    exc.node = self.process[1]  # a restarting actor's error names no node: its last one
                deaths += 1
                if deaths > self.retries:
                    raise
                since = self.failures.failed(exc, self._action("call sent again")) if self.failures else time.time()
                restore = bool(self.restores)
                continue
            if since is None and self.process not in (None, process):
                since = self._restarted_between_calls(process)
                if self.restores:
                    self.process, restore = process, True
                    continue
            self.process, self.answered = process, time.time()
            if since is not None and self.failures is not None:
                self.failures.recovered(self.role, since, self.failures.step)
            return result

    def _restarted_between_calls(self, process: tuple[int, str]) -> float:
        """The actor answered from a new process: it died after its last answer and Ray brought it
        back before this call reached it. Counted and logged; the downtime is at most the time
        since that answer."""
        (old_pid, node), new_pid = self.process, process[0]
        exc = ActorFailed(self.role, f"{self.role} actor died between calls (process {old_pid} on {node}); "
                          f"Ray restarted it as process {new_pid}", died=True, node=node)
        if self.failures is not None:
            then = "between calls, call sent again" if self.restores else "between calls"
            self.failures.failed(exc, self._action(then))
        return self.answered

    def _action(self, then: str) -> str:
        return ", ".join(filter(None, ("ray restart", self.restores, then)))
