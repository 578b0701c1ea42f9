"""`rlhf submit` and `rlhf jobs status|logs|stop`: training runs as Ray jobs on a cluster (rlhf/cluster/jobs.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from rlhf.cli.common import CONFIG_ARG, OVERRIDES_ARG, console, fail, out
from rlhf.config.typed_yaml import ConfigError

jobs_app = typer.Typer(help="Follow and control runs submitted as Ray jobs.", no_args_is_help=True)


ADDRESS_OPT = typer.Option(
    None, help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, an http "
    "RAY_ADDRESS, else that one).")


def submit(
    config: Path = CONFIG_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    address: str | None = ADDRESS_OPT,
    follow: bool = typer.Option(False, "--follow",
                                help="Stream the job's log until it ends; exit 1 unless it succeeds."),
    run_dir: str | None = typer.Option(
        None, help="Run directory on the node that runs the job; relative paths go under its home "
        "directory (default ~/rlhf-runs/<job id>)."),
    check_resources: bool = typer.Option(
        True, help="Compare the run's CPUs/GPUs with the cluster's before submitting (skip it for a "
        "cluster that will autoscale up)."),
) -> None:
    """Submit a training run (`rlhf train`) to a Ray cluster as a Ray job; prints the job id."""
    from rlhf.cluster import jobs

    submitted: list[str] = []

    def say(job_id: str) -> None:
        submitted.append(job_id)
        typer.echo(job_id)

    try:
        rep = jobs.submit(config, overrides or [], address=address, follow=follow, run_dir=run_dir,
                          check_resources=check_resources, say=say, write=lambda text: typer.echo(text, nl=False))
    except (ConfigError, jobs.JobError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"stopped following; the job goes on (`rlhf jobs stop {submitted[0]}` stops it)" if submitted
             else "interrupted before the job was submitted", code=130)
    if not follow:
        where = f" --address {address}" if address else ""
        console.print(f"follow it with: rlhf jobs logs {rep.job_id} --follow{where}", markup=False, soft_wrap=True)
    else:
        _job_outcome(rep)


def _job_outcome(rep) -> None:
    """Print how a followed job ended; exit 1 unless it succeeded."""
    from rlhf.cluster.jobs import describe

    if not rep.ok:
        fail(describe(rep), code=1)
    console.print(describe(rep), markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- jobs

JOB_ID_ARG = typer.Argument(..., help="Job id, as printed by `rlhf submit`.")


@jobs_app.command("status")
def jobs_status(job_id: str = JOB_ID_ARG, address: str | None = ADDRESS_OPT) -> None:
    """A job's state, its run directory and, when it failed, its error and last log lines."""
    from rlhf.cluster import jobs

    try:
        rep = jobs.status(job_id, address)
    except jobs.JobError as exc:
        fail(str(exc))
    out.print(jobs.describe(rep), markup=False, highlight=False, soft_wrap=True)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str = JOB_ID_ARG,
    address: str | None = ADDRESS_OPT,
    follow: bool = typer.Option(False, "--follow", help="Stream until the job ends; exit 1 unless it succeeds."),
) -> None:
    """A job's log so far, or streamed to its end."""
    from rlhf.cluster import jobs

    try:
        rep = jobs.logs(job_id, address, follow=follow, write=lambda text: typer.echo(text, nl=False))
    except jobs.JobError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("stopped following; the job goes on", code=130)
    if follow:
        _job_outcome(rep)


@jobs_app.command("stop")
def jobs_stop(job_id: str = JOB_ID_ARG, address: str | None = ADDRESS_OPT) -> None:
    """Stop a running job (its actors and placement group go with it)."""
    from rlhf.cluster import jobs

    try:
        was_running, rep = jobs.stop(job_id, address)
    except jobs.JobError as exc:
        fail(str(exc))
    note = "stop requested" if was_running else "it had already finished"
    out.print(f"{note}; job {rep.job_id}: {rep.status}", markup=False, highlight=False, soft_wrap=True)
