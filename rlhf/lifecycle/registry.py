"""The model registry: every exported model as a numbered version with its lineage and status.

A registry is a folder: `registry.json` (the versions, newest last, and the order in which
versions went live) and one subfolder per version holding the model's files (hard links to the
export where the file system allows, else copies), so a version stays as it was when a run
folder is rerun or deleted. Writers take `registry.lock` (flock) and replace the JSON
atomically, so a reader such as a serving replica never sees half a file.

Statuses: `candidate` (registered, never served), `live` (the one version to serve), `retired`
(served before, or replaced). Promotion refuses a version whose evaluation or red-team gate
failed unless forced, and says why; rollback makes the version that was live before the
current one live again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STATUSES = ("candidate", "live", "retired")


class RegistryError(ValueError):
    """A registry request that cannot be done: unknown version, refused promotion, no rollback."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def blockers(version: dict) -> list[str]:
    """Why `version` must not go live: a failed evaluation or red-team gate (empty: nothing)."""
    found = []
    evaluation = version.get("evaluation") or {}
    if evaluation.get("passed") is False:
        found.append(f"its evaluation failed ({evaluation.get('why', 'no reason recorded')})")
    redteam = version.get("redteam") or {}
    if redteam.get("passed") is False:
        found.append(f"its red-team gate failed ({redteam.get('why', 'no reason recorded')})")
    return found


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.file = self.root / "registry.json"

    # ------------------------------------------------------------------------- reading

    def read(self) -> dict:
        if not self.file.is_file():
            return {"versions": [], "live_order": []}
        try:
            state = json.loads(self.file.read_text())
        except ValueError as exc:
            raise RegistryError(f"{self.file}: not valid JSON ({exc})") from exc
        if not isinstance(state.get("versions"), list):
            raise RegistryError(f"{self.file}: expected an object with a 'versions' list")
        state.setdefault("live_order", [])
        return state

    def versions(self) -> list[dict]:
        return self.read()["versions"]

    def get(self, name: str) -> dict:
        for version in self.versions():
            if version["version"] == name:
                return version
        known = ", ".join(v["version"] for v in self.versions()) or "none yet"
        raise RegistryError(f"{self.root}: no version '{name}' (known: {known})")

    def live(self) -> dict | None:
        return next((v for v in self.versions() if v["status"] == "live"), None)

    # ------------------------------------------------------------------------- writing

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The state, under the lock; written back atomically when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            yield state
            tmp = self.file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state, indent=2, default=str))
            os.replace(tmp, self.file)

    def register(self, model: str | Path, source: str, parent: str | None = None, data: dict | None = None,
                 config: dict | None = None, evaluation: dict | None = None, redteam: dict | None = None) -> dict:
        """Add `model` (an HF folder) as the next version, a candidate. `data`: file -> hash."""
        model = Path(model)
        if not (model / "config.json").is_file():
            raise RegistryError(f"{model}: not a model folder (no config.json)")
        with self._locked() as state:
            if parent is not None and parent not in {v["version"] for v in state["versions"]}:
                raise RegistryError(f"parent version '{parent}' is not in {self.root}")
            name = f"v{len(state['versions']) + 1}"
            _link_tree(model, self.root / name)
            version = {"version": name, "path": str((self.root / name).resolve()), "exported_from": str(model),
                       "source": source, "parent": parent, "created": _now(), "status": "candidate",
                       "data": data or {}, "config": config or {}, "evaluation": evaluation,
                       "redteam": redteam, "events": [{"at": _now(), "event": "registered"}]}
            state["versions"].append(version)
        return version

    def promote(self, name: str, force: bool = False, note: str = "") -> dict:
        """Make `name` live; the live one before it is retired. Refused when a gate failed, unless forced."""
        with self._locked() as state:
            target = _find(state, name, self.root)
            if target["status"] == "live":
                raise RegistryError(f"{name} is already live")
            reasons = blockers(target)
            if reasons and not force:
                raise RegistryError(f"{name} is not promoted: {'; '.join(reasons)} (--force promotes it anyway)")
            _go_live(state, target, "promoted" + (" (forced)" if reasons else ""), note)
            state["live_order"].append(name)
        return target

    def rollback(self, note: str = "") -> dict:
        """Make the version that was live before the current one live again."""
        with self._locked() as state:
            order = state["live_order"]
            if len(order) < 2:
                raise RegistryError(f"{self.root}: nothing to roll back to (live so far: {order or 'none'})")
            order.pop()
            target = _find(state, order[-1], self.root)
            _go_live(state, target, "rolled back to", note)
        return target


def _find(state: dict, name: str, root: Path) -> dict:
    for version in state["versions"]:
        if version["version"] == name:
            return version
    raise RegistryError(f"{root}: no version '{name}' (known: {', '.join(v['version'] for v in state['versions'])})")


def _go_live(state: dict, target: dict, event: str, note: str) -> None:
    for version in state["versions"]:
        if version["status"] == "live":
            version["status"] = "retired"
            version["events"].append({"at": _now(), "event": f"retired: {target['version']} went live"})
    target["status"] = "live"
    target["events"].append({"at": _now(), "event": event, **({"note": note} if note else {})})
