"""Shared test set-up: offline, CPU-only, small vLLM KV cache, and one cached tiny model."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Before anything imports transformers, vLLM, DeepSpeed or Ray: these are read at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The same cache `make` uses, so tests and the demo share prepared models.
os.environ.setdefault("RLHF_CACHE", str(REPO / ".cache"))
# DeepSpeed's compiled CPU ops live with the venv that built them (see scripts/setup.sh).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch-extensions"))


# Modules that take minutes go first, so a broken end-to-end path fails early in `make test`.
# Order inside a module is kept.
LONG_FIRST = ("tests/serve/test_serve.py", "tests/actors/test_rl.py", "tests/rlhf/pipeline/test_pipeline.py",
              "tests/tune/", "tests/rlhf/human/test_review.py", "tests/rlhf/supervised/test_finetune.py",
              "tests/rlhf/evaluation/test_evaluate.py", "tests/rlhf/redteam/test_redteam.py",
              "tests/rlhf/models/test_models.py", "tests/rlhf/cluster/test_jobs.py", "tests/serve/test_serve_nodes.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        return next((n for n, prefix in enumerate(LONG_FIRST) if path.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the order inside each module stays


def _process_table() -> tuple[dict[int, int], dict[int, bytes]]:
    """Every process on the machine: pid -> parent pid, and pid -> command line."""
    parents, cmdlines = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                pid = int(proc.name)
                parents[pid] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdlines[pid] = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    return parents, cmdlines


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = parents.get(pid, 0)
        if pid == root:
            return True
    return False


def _ray_daemons_here() -> list[int]:
    """gcs_server processes descended from this process (a Ray started by the test or its CLI)."""
    parents, cmdlines = _process_table()
    return [pid for pid, cmd in cmdlines.items()
            if b"gcs_server" in cmd.split(b"\0")[0] and _descends(pid, os.getpid(), parents)]


@pytest.fixture(autouse=True)
def _no_ray_means_no_ray(request):
    """A test marked `no_ray` runs beside the `alone` ones in make test: it must start no Ray."""
    yield
    if request.node.get_closest_marker("no_ray") is not None:
        ray = sys.modules.get("ray")
        started = (ray is not None and ray.is_initialized()) or _ray_daemons_here()
        assert not started, "a test marked no_ray started Ray; drop the marker (it runs beside the alone tests)"


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """A random tiny Llama folder (built once, then reused from RLHF_CACHE; test workers that
    start together take turns, so none reads a half-written folder)."""
    import fcntl

    from rlhf.models.tiny import build_tiny_model

    cache = Path(os.environ["RLHF_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".tiny-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(build_tiny_model(cache / "tiny-llama"))


def _role_pids(role_class: str, under: int | None = None) -> list[int]:
    """Actor processes of this class (Ray titles them `ray::<Class>[.method]`) that descend from
    `under` (default: this process; a Ray started here is its child), without the children they
    fork (which inherit the title). Another test's Ray on the machine is never touched."""
    root = os.getpid() if under is None else under
    parents, cmdlines = _process_table()
    found = {pid for pid, cmd in cmdlines.items() if f"ray::{role_class}".encode() in cmd}
    return [pid for pid in found if parents.get(pid) not in found and _descends(pid, root, parents)]


@pytest.fixture(scope="session")
def role_pids():
    """`role_pids("RolloutActor"[, under=pid])`: the pids of a Ray actor class's processes in
    this process's tree (or `under`'s), to kill -9 them."""
    return _role_pids


# ----------------------------------------------------------------------------- two Ray nodes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """`free_port()`: a loopback port nothing listens on."""
    return _free_port


def node_ip() -> str:
    """This machine's first non-loopback IPv4 address, so the cluster's nodes are addressed the
    way real hosts are (loopback when there is none)."""
    import socket

    import psutil

    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127.") and name in stats and stats[name].isup:
                return a.address
    return "127.0.0.1"


@dataclass
class RayNodes:
    dashboard: str  # http://127.0.0.1:port, for Ray Jobs and the State API
    gcs: str  # ip:port, for `ray.init(address=...)` and resources.address
    ip: str  # the nodes' address
    temp: Path


NODE_PORTS = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port", "node-manager-port", "object-manager-port"]


def _ray_start(temp: Path, name: str, args: list[str], ports: list[str], node_env: dict | None = None):
    import subprocess
    import sys

    ports = {port: _free_port() for port in ports}
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", *args, "--disable-usage-stats"]
    cmd += [arg for port, number in ports.items() for arg in (f"--{port}", str(number))]
    # Ray Serve's defaults on the nodes (test_serve's fixture exports serve/run.py's one-machine
    # SERVE_ENV), plus what the caller asks for.
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") and not k.startswith("RAY_SERVE_")}
    child_env.update(node_env or {})
    with open(temp / f"{name}.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    return proc, ports


def _stop_node(proc, temp: Path) -> None:
    """Stop this node and everything it started, and nothing else on the machine (never `ray
    stop`, which stops every Ray here)."""
    import contextlib
    import signal

    import psutil

    try:
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)  # `ray start --block` then stops the processes it started
    # `ray start` is done within seconds; the head's dashboard and runtime-env agents can stay a
    # minute after their raylet is gone, so whatever is left once it has exited is killed.
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=1)
    strays = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    for p in alive + strays:  # strays: anything else naming our temp dir is ours too
        with contextlib.suppress(psutil.Error):
            p.kill()


def _wait_ready(procs: list, address: str, temp: Path, cpus: int, timeout_s: float = 180) -> None:
    """Until both nodes have joined (the cluster counts `cpus`)."""
    import time

    from rlhf.cluster import jobs

    deadline = time.monotonic() + timeout_s
    logs = lambda: "\n".join(p.read_text()[-2000:] for p in sorted(temp.glob("*.log")))  # noqa: E731
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            pytest.fail(f"ray start exited:\n{logs()}")
        try:
            totals, _ = jobs.cluster_capacity(address)
            if totals.get("CPU") == cpus:
                return
        except jobs.JobError:
            pass
        time.sleep(2)
    pytest.fail(f"the two local Ray nodes did not come up in {timeout_s:.0f} s:\n{logs()}")


@contextmanager
def _two_ray_nodes(cpus: int, node_env: dict | None = None) -> Iterator[RayNodes]:
    """A head advertising the custom resource `gen_node` and a worker advertising `train_node`,
    each with its own ports, temp dir and half of `cpus`, on this machine's address; `node_env`:
    environment variables for both nodes' processes."""
    import secrets
    import shutil
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp"))  # short: socket paths have a limit
    # Token authentication, as on a real cluster: every node, the job client and the job share one
    # token (a node started with `--address` does not pick ~/.ray/auth_token up by itself).
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    ip, half = node_ip(), str(cpus // 2)
    common = ["--node-ip-address", ip, "--num-cpus", half, "--object-store-memory", str(512 * 1024**2)]
    head, ports = _ray_start(temp, "head", ["--head", *common, "--include-dashboard", "true", "--temp-dir", str(temp),
                                            "--resources", '{"gen_node": 4}'],
                             ["port", "dashboard-port", "ray-client-server-port", *NODE_PORTS], node_env)
    procs = [head]
    nodes = RayNodes(f"http://127.0.0.1:{ports['dashboard-port']}", f"{ip}:{ports['port']}", ip, temp)
    try:
        # Its own temp dir: two nodes sharing one would also share (and clean up) each other's
        # unpacked job packages.
        (temp / "w").mkdir()
        worker, _ = _ray_start(temp, "worker", ["--address", nodes.gcs, *common, "--temp-dir", str(temp / "w"),
                                                "--resources", '{"train_node": 4}'], NODE_PORTS, node_env)
        procs.append(worker)
        _wait_ready(procs, nodes.dashboard, temp, cpus)
        yield nodes
    finally:
        for proc in reversed(procs):
            _stop_node(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="session")
def two_ray_nodes():
    """`with two_ray_nodes(cpus[, node_env]) as nodes:` a two-node Ray cluster on this machine."""
    return _two_ray_nodes


# ----------------------------------------------------------------------------- endpoint users


class _RatingUsers:
    """Clients that ask, then rate the answer; each feedback the server acknowledged (200) is kept."""

    def __init__(self, base: str, clients: int, key: str):
        import threading

        self.base, self.key, self.stop = base, key, threading.Event()
        self.outcomes: list[tuple[float, str, object]] = []  # (time, route, status or error name)
        self.acked: list[str] = []  # answer ids whose feedback was acknowledged
        self.errors: list[tuple[int, str | None, dict]] = []  # (status, Retry-After, JSON body) of each non-200
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=120, headers={"Authorization": f"Bearer {self.key}"}) as client:
            while not self.stop.is_set():
                answer = self._post(client, "/ask", {"question": f"What is {i} plus 3?", "max_tokens": 4})
                if answer is not None and self._post(client, "/feedback", {"id": answer["id"], "rating": 1 + i % 5}):
                    self.acked.append(answer["id"])

    def _post(self, client, route: str, body: dict) -> dict | None:
        import httpx

        try:
            resp = client.post(route, json=body)
            status = resp.status_code
        except httpx.HTTPError as exc:  # a dropped connection
            status = type(exc).__name__
        else:
            if status != 200:
                try:
                    body = resp.json()
                except ValueError:
                    body = {"not_json": resp.text[:200]}
                self.errors.append((status, resp.headers.get("retry-after"), body))
        self.outcomes.append((time.time(), route, status))
        return resp.json() if status == 200 else None


@pytest.fixture(scope="session")
def rating_users():
    """`rating_users(base_url, clients=N, key=K)`: threads that ask and rate until `.stop` is set."""
    return _RatingUsers
