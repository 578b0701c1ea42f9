"""Training runs as Ray jobs: `rlhf submit` and `rlhf jobs status|logs|stop` (the Ray Jobs SDK).

A job is `rlhf train CONFIG OVERRIDES --run-dir DIR` started by the cluster's job manager on
the head node. The project directory is uploaded as the job's working directory (so the
cluster runs the code you submitted, and actors on other nodes import it too), the run's
`RLHF_*`, `HF_*`, `VLLM_*`, `DS_*` environment goes along as runtime-environment variables,
and the driver reserves one CPU (entrypoint resources).

Where things live:
- the config file must be inside the project directory (it travels in the upload);
- the run directory is on the node that runs the job: an absolute `--run-dir` as given, a
  relative one under that node's home directory, by default `~/rlhf-runs/<job id>`;
- the job runs the interpreter that submitted it when that path exists on the head (one
  machine, or the same image everywhere), else the head's `python`.

Ray 2.60 clusters started with a token (`~/.ray/auth_token`) refuse clients without it; the
token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and sent as a
bearer header, so no RAY_AUTH_MODE setting is needed here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.cluster.resources import check_fits, role_bundles
from rlhf.config.tree import Config, load_config

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = ["/.venv", "/.cache", "/runs", ".git", "__pycache__", "*.egg-info", ".pytest_cache"]
FORWARD_PREFIXES = ("RLHF_", "HF_", "TRANSFORMERS_", "VLLM_", "DS_", "TOKENIZERS_")
CPU_ONLY_VARS = ("DS_ACCELERATOR", "VLLM_CPU_", "VLLM_TARGET_DEVICE")  # wrong on a GPU cluster
CONNECT_TIMEOUT_S = 5.0
TAIL_LINES = 20


class JobError(RuntimeError):
    """A job command that cannot go on; the message says what to do."""


@dataclass
class JobSpec:
    """Everything `JobSubmissionClient.submit_job` gets, built without a cluster."""

    submission_id: str
    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    entrypoint_num_cpus: float
    run_dir: str


@dataclass
class JobReport:
    """A job's state as `rlhf jobs status` shows it."""

    job_id: str
    status: str
    message: str = ""
    run_dir: str = ""
    entrypoint: str = ""
    error: str = ""
    """The run's own `error: ...` line, when its log has one."""
    tail: list[str] = field(default_factory=list)
    """The last lines of the job's log (failed or stopped jobs)."""

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")


# ----------------------------------------------------------------------------- connecting


def resolve_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS, else the local default."""
    env = os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    address = address or env or (ray_address if ray_address.startswith("http") else "") or DEFAULT_ADDRESS
    if address.startswith("ray://"):
        raise JobError(f"{address} is a Ray Client address; jobs go to the dashboard, e.g. http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def auth_headers() -> dict[str, str]:
    """A bearer header with this machine's Ray token, when it has one and auth is not disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_reachable(address: str, headers: dict[str, str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One short request, so a wrong or dead address fails in seconds instead of hanging."""
    import requests

    try:
        r = requests.get(f"{address}/api/version", headers=headers, timeout=timeout)
    except requests.exceptions.Timeout:
        raise JobError(f"no answer from the Ray dashboard at {address} within {timeout:g} s; "
                       f"{_address_hint()}") from None
    except requests.exceptions.RequestException as exc:
        raise JobError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); "
                       f"{_address_hint()}") from None
    if r.status_code in (401, 403):
        raise JobError(_token_hint(address))
    if r.status_code != 200 or "ray_version" not in r.text:
        raise JobError(f"{address} answered but is not a Ray dashboard (HTTP {r.status_code}); {_address_hint()}")


def _address_hint() -> str:
    return ("is the cluster up? Pass the dashboard address with --address (a `ray up cluster.yaml` cluster: "
            "run `ray dashboard cluster.yaml` and use http://127.0.0.1:8265)")


def _token_hint(address: str) -> str:
    return (f"the Ray cluster at {address} refused this machine's authentication token (or it has none); "
            "copy the head node's ~/.ray/auth_token to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN")


def client(address: str | None = None):
    """A JobSubmissionClient for the cluster, checked to answer within seconds."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    headers = auth_headers()
    check_reachable(address, headers)
    _quiet_ray_logs()
    with _translated(address):
        return JobSubmissionClient(address, headers=headers or None)


@contextmanager
def _translated(address: str, job_id: str = "") -> Iterator[None]:
    """Ray SDK errors -> JobError with what to do."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except JobError:
        raise
    except AuthenticationError:
        raise JobError(_token_hint(address)) from None
    except (ConnectionError, requests.exceptions.RequestException) as exc:
        raise JobError(f"lost the connection to the Ray dashboard at {address}: {exc}") from None
    except RuntimeError as exc:
        if job_id and ("404" in str(exc) or "does not exist" in str(exc)):
            raise JobError(f"no job '{job_id}' on the cluster at {address}") from None
        raise JobError(f"the Ray dashboard at {address} refused the request: {exc}") from None


def cluster_capacity(address: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Total resources of the cluster's live nodes (CPU, GPU, custom ones), and each node's,
    through the State API."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource
    from ray.util.state.exception import RayStateApiException

    address = resolve_address(address)
    headers = {"Content-Type": "application/json", **auth_headers()}
    check_reachable(address, headers)
    options = ListApiOptions(detail=True, timeout=int(CONNECT_TIMEOUT_S * 2), filters=[("state", "=", "ALIVE")])
    with _translated(address):
        try:
            api = StateApiClient(address=address, headers=headers)
            nodes = api.list(StateResource.NODES, options=options, raise_on_missing_output=False)
        except RayStateApiException as exc:
            raise JobError(f"could not list the nodes of the Ray cluster at {address}: {exc}") from None
    per_node = [dict(_get(n, "resources_total") or {}) for n in nodes]
    totals = {key: sum(n.get(key, 0.0) for n in per_node) for key in {"CPU", "GPU"}.union(*per_node)}
    return totals, per_node


def _quiet_ray_logs() -> None:
    # Ray narrates each upload (default excludes, .gitignore files, the websocket closing) at
    # INFO/WARNING; the job's own log is what the user is here for.
    import logging

    for name in ("ray._private.runtime_env", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _get(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name)


# ----------------------------------------------------------------------------- building a job


def project_root() -> Path:
    """The directory a job uploads: the source tree this `rlhf` was imported from."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "actors").is_dir()):
        raise JobError(f"rlhf submit uploads the project's source tree, but rlhf runs from {root}, which is "
                       "not one; install the project editable (pip install -e .) from its checkout")
    return root


def config_in_project(config_path: Path, root: Path) -> str:
    """CONFIG as a path inside the uploaded directory (the job reads it from there)."""
    path = Path(config_path).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise JobError(f"{config_path} is outside the project directory {root}, which is what the job "
                       f"uploads; move or copy it under {root} (e.g. examples/)") from None
    if rel.parts[0] in (".venv", ".cache", "runs", ".git"):
        raise JobError(f"{config_path} is under {rel.parts[0]}/, which the job upload leaves out; "
                       "keep configs elsewhere in the project (e.g. examples/)")
    return rel.as_posix()


def forwarded_env(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The submitting shell's RLHF_/HF_/VLLM_/DS_ variables; CPU-only ones stay home for GPU runs."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES)}
    if cfg.resources.use_gpu:
        env = {k: v for k, v in env.items() if not k.startswith(CPU_ONLY_VARS)}
    # `rlhf train` hands these same variables to its actors through ray.init, which Ray
    # refuses inside a job as a conflict with the job's own variables unless told to merge.
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach `--follow` as they are printed
    return env


def _run_dir_arg(run_dir: str | None, submission_id: str) -> tuple[str, str]:
    """(shell word for --run-dir, how to show it); relative paths land under the node's home."""
    if run_dir and Path(run_dir).is_absolute():
        return shlex.quote(str(run_dir)), str(run_dir)
    rel = str(run_dir) if run_dir else f"rlhf-runs/{submission_id}"
    return '"$HOME"/' + shlex.quote(rel), f"~/{rel}"


def build_spec(cfg: Config, config_path: Path, overrides: list[str], run_dir: str | None = None,
               python: str | None = None, entrypoint_num_cpus: float = 1.0,
               environ: dict[str, str] | None = None) -> JobSpec:
    """The job for `rlhf train config_path overrides` (cfg is that config, already checked)."""
    root = project_root()
    rel = config_in_project(config_path, root)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.train.name).strip("-") or "run"
    submission_id = f"rlhf-{name}-{uuid.uuid4().hex[:8]}"
    run_word, run_shown = _run_dir_arg(run_dir, submission_id)
    args = " ".join(shlex.quote(a) for a in ["train", rel, *overrides])
    # The head runs this with its own environment: prefer the submitting interpreter where it
    # exists there (same machine or image), else the head's `python`.
    entrypoint = (f"PY={shlex.quote(python or sys.executable)}; [ -x \"$PY\" ] || PY=python; "
                  f"exec \"$PY\" -m rlhf.cli.main {args} --run-dir {run_word}")
    runtime_env = {"working_dir": str(root), "excludes": list(EXCLUDES), "env_vars": forwarded_env(cfg, environ)}
    metadata = {"config": rel, "overrides": " ".join(overrides), "run_dir": run_shown, "name": cfg.train.name}
    return JobSpec(submission_id, entrypoint, runtime_env, metadata, entrypoint_num_cpus, run_shown)


def check_capacity(cfg: Config, address: str, entrypoint_num_cpus: float) -> None:
    """Name what the run asks for that the cluster does not have (ConfigError), before submitting."""
    layout = role_bundles(cfg)
    if entrypoint_num_cpus > 0:
        layout.add("driver", {"CPU": entrypoint_num_cpus})
    totals, nodes = cluster_capacity(address)
    check_fits(layout, totals, nodes or None)


# ----------------------------------------------------------------------------- commands


def submit(config_path: Path, overrides: list[str] | None = None, address: str | None = None, follow: bool = False,
           run_dir: str | None = None, *, check_resources: bool = True, python: str | None = None,
           entrypoint_num_cpus: float = 1.0, say: Callable[[str], None] = print,
           write: Callable[[str], None] | None = None) -> JobReport:
    """Check the config (and the cluster's room for it), submit, and optionally follow to the end.

    `say` gets the job id line and notes; `write` gets streamed log text (default: stdout).
    Raises ConfigError for a config that cannot run and JobError for cluster problems."""
    overrides = list(overrides or [])
    cfg = load_config(config_path, overrides)
    spec = build_spec(cfg, Path(config_path), overrides, run_dir, python, entrypoint_num_cpus)
    jobs = client(address)
    address = resolve_address(address)
    if check_resources:
        check_capacity(cfg, address, entrypoint_num_cpus)
    with _translated(address):
        job_id = jobs.submit_job(entrypoint=spec.entrypoint, submission_id=spec.submission_id,
                                 runtime_env=spec.runtime_env, metadata=spec.metadata,
                                 entrypoint_num_cpus=spec.entrypoint_num_cpus)
    say(job_id)
    if not follow:
        return JobReport(job_id, "PENDING", run_dir=spec.run_dir, entrypoint=spec.entrypoint)
    return follow_job(jobs, address, job_id, write or _stdout)


def follow_job(jobs, address: str, job_id: str, write: Callable[[str], None]) -> JobReport:
    """Stream the job's log until it ends, then report how it ended."""

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    with _translated(address, job_id):
        try:
            asyncio.run(tail())
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                raise
            # The log stream broke (e.g. the dashboard restarted); the job itself goes on.
            write(f"\n[log stream closed: {exc}; waiting for the job to finish]\n")
        return wait(jobs, address, job_id)


def wait(jobs, address: str, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> JobReport:
    """Poll until the job is finished (or `timeout_s` passes), then report it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _translated(address, job_id):
        while not jobs.get_job_status(job_id).is_terminal():
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll_s)
    return report(jobs, address, job_id)


def report(jobs, address: str, job_id: str) -> JobReport:
    with _translated(address, job_id):
        info = jobs.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        rep = JobReport(job_id, status, (info.message or "").strip(), (info.metadata or {}).get("run_dir", ""),
                        info.entrypoint or "")
        if status in ("FAILED", "STOPPED"):
            lines = jobs.get_job_logs(job_id).rstrip("\n").splitlines()
            rep.tail = lines[-TAIL_LINES:]
            errors = [line for line in lines if line.lstrip().lower().startswith("error:")]
            rep.error = errors[-1].strip() if errors else ""
    return rep


def status(job_id: str, address: str | None = None) -> JobReport:
    return report(client(address), resolve_address(address), job_id)


def logs(job_id: str, address: str | None = None, follow: bool = False,
         write: Callable[[str], None] | None = None) -> JobReport:
    """Print the job's log so far, or stream it to the end with `follow`."""
    write = write or _stdout
    jobs, address = client(address), resolve_address(address)
    if follow:
        return follow_job(jobs, address, job_id, write)
    with _translated(address, job_id):
        write(jobs.get_job_logs(job_id))
    return report(jobs, address, job_id)


def stop(job_id: str, address: str | None = None, timeout_s: float = 30.0) -> tuple[bool, JobReport]:
    """Ask the cluster to stop the job; (whether it was still running, its state afterwards)."""
    jobs, address = client(address), resolve_address(address)
    with _translated(address, job_id):
        stopped = jobs.stop_job(job_id)
    return stopped, wait(jobs, address, job_id, timeout_s=timeout_s)


def describe(rep: JobReport) -> str:
    """Several lines for people: status, run directory, the error and the log's last lines."""
    lines = [f"job {rep.job_id}: {rep.status}"]
    if rep.run_dir:
        lines.append(f"run directory (on the node that ran it): {rep.run_dir}")
    if rep.status == "FAILED":
        # Ray's message repeats the log after its first line; the tail below shows that.
        first = rep.message.splitlines()[0].split(", last available logs")[0] if rep.message else ""
        lines.append(rep.error or first or "failed without a message")
        if rep.error and first:
            lines.append(first)
    if rep.tail:
        lines.append(f"last {len(rep.tail)} log lines:")
        lines += [f"  {line}" for line in rep.tail]
    return "\n".join(lines)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
