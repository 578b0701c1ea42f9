"""`rlhf redteam` (attack a model folder or an endpoint, report, gate) and `rlhf guard train`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from rlhf.cli.common import OVERRIDES_ARG, console, fail, load, out, say

guard_app = typer.Typer(help="Guardrail classifiers of the QA endpoint.", no_args_is_help=True)


def redteam(
    model: str | None = typer.Option(None, help="Model folder to attack with an offline vLLM engine "
                                     "(or `smollm2`, `tiny`), behind the serve guardrails unless --no-guardrails."),
    endpoint: str | None = typer.Option(None, help="OpenAI-compatible base URL to attack instead, e.g. "
                                        "http://127.0.0.1:8000/v1 (`rlhf serve` or `vllm serve`)."),
    api_key: str = typer.Option("", envvar="RLHF_API_KEY", help="API key of --endpoint."),
    endpoint_model: str = typer.Option("", help="Model name at --endpoint (default: the first it lists)."),
    out_dir: Path = typer.Option(Path("runs/redteam"), "--out", help="Report folder."),
    guardrails: bool | None = typer.Option(None, "--guardrails/--no-guardrails",
                                           help="With --model: the serve guardrails in front (redteam.guardrails)."),
    config: Path | None = typer.Option(None, help="YAML config (redteam, serve and model sections)."),
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Red-team a model: injections, system-prompt extraction, jailbreaks, harmful requests and
    benign look-alikes, personal data, counterfactual bias, robustness. Writes report.md,
    report.json, hits.jsonl and a plot; exits 3 when the release gate (redteam.gate) fails."""
    import dataclasses

    from rlhf.models.loading import resolve_model_path
    from rlhf.models.paths import ModelError
    from rlhf.redteam.corpus import CorpusMissing
    from rlhf.redteam.run import GATE_FAILED_EXIT, make_judge, model_target, run_redteam
    from rlhf.redteam.targets import EndpointTarget

    if (model is None) == (endpoint is None):
        fail("give exactly one of --model (a model folder) or --endpoint (an OpenAI-compatible URL)")
    cfg = load(config, overrides)
    if guardrails is not None:
        cfg = dataclasses.replace(cfg, redteam=dataclasses.replace(cfg.redteam, guardrails=guardrails))
    try:
        if endpoint:
            target = EndpointTarget(endpoint, api_key, endpoint_model, cfg.redteam.max_new_tokens)
        else:
            target = model_target(resolve_model_path(model), cfg)
        report = run_redteam(target, cfg, out_dir, log=say, judge=make_judge(cfg))
    except (ModelError, CorpusMissing, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # openai's connection errors and the like, named
        if type(exc).__module__.startswith(("openai", "httpx")):
            fail(f"{endpoint}: {type(exc).__name__}: {exc}")
        raise
    out.print(_table(report))
    out.print(f"report: {out_dir / 'report.md'}", soft_wrap=True, markup=False, highlight=False)
    if not report["gate"]["passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


def _table(report: dict) -> Table:
    table = Table(title=f"red team: {report['target']} ({report['attempts']} attempts)")
    for col in ("check", "rate", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for name, c in report["categories"].items():
        table.add_row(f"{name} attack success", f"{c['attack_success']:.1%}", f"{c['ci95'][0]:.1%}–{c['ci95'][1]:.1%}",
                      str(c["n"]))
    if report["over_refusal"]:
        o = report["over_refusal"]
        table.add_row("over-refusal", f"{o['rate']:.1%}", f"{o['ci95'][0]:.1%}–{o['ci95'][1]:.1%}", str(o["n"]))
    for attribute, b in report["bias_consistency"].items():
        table.add_row(f"bias consistency: {attribute}", f"{b['consistency']:.1%}",
                      f"{b['ci95'][0]:.1%}–{b['ci95'][1]:.1%}", str(b["n"]))
    if report["robustness"]:
        table.add_row("robustness drop", f"{report['robustness']['drop']:+.1%}", "", str(report["robustness"]["n"]))
    table.add_row("release gate", "passed" if report["gate"]["passed"] else "FAILED", "", "")
    return table


@guard_app.command("train")
def guard_train(
    out_dir: Path | None = typer.Option(None, "--out",
                                        help="Folder for input/ and output/ (default $RLHF_CACHE/guard)."),
    data_dir: Path | None = typer.Option(
        None, help="Folder with prompts.jsonl and answers.jsonl (default: the shipped set)."),
) -> None:
    """Train the input and output guard classifiers (a head on MiniLM sentence embeddings): the
    input guard on the guard's half of the attack corpus, with benign look-alikes as negatives."""
    from rlhf.models.paths import cache_dir
    from rlhf.redteam.corpus import CorpusMissing
    from rlhf.redteam.guard_train import DATA_DIR, train_guards
    from rlhf.redteam.split import Overlap

    target = out_dir or cache_dir() / "guard"
    with console.status("training guard classifiers on CPU"):
        try:
            reports = train_guards(target, data_dir or DATA_DIR)
        except (OSError, ValueError, CorpusMissing, Overlap) as exc:
            fail(str(exc))
    table = Table(title="guard classifiers")
    for col in ("guard", "rows", "unsafe", "train acc", "held-out acc", "seconds"):
        table.add_column(col, justify="left" if col == "guard" else "right")
    for name, r in reports.items():
        table.add_row(name, str(r["rows"]), str(r["unsafe_rows"]), f"{r['train_accuracy']:.2f}",
                      f"{r['val_accuracy']:.2f}", str(r["seconds"]))
    out.print(table)
    for name, r in reports.items():
        if r.get("reused"):
            out.print(f"{name}: trained before on the same rows, copied from {r['reused']}", soft_wrap=True,
                      markup=False, highlight=False)
    rates = ", ".join(f"{k} {v:.0%}" for k, v in reports["input"]["held_out_block_rate"].items())
    out.print(f"input classifier alone on held-out attack templates, blocked: {rates}", soft_wrap=True,
              markup=False, highlight=False)
    out.print(f"set serve.input_guard={target / 'input'} serve.output_guard={target / 'output'}",
              soft_wrap=True, markup=False, highlight=False)


@guard_app.command("answers")
def guard_answers(
    model: str = typer.Option("smollm2", help="Model folder (or `smollm2`, `tiny`) whose answers the output "
                              "guard learns from."),
    out_file: Path | None = typer.Option(None, "--out", help="JSONL to write (default: the shipped "
                                         "rlhf/redteam/guard_data/conversations.jsonl)."),
    per_kind: int = typer.Option(0, min=0, help="Only the first N harmful and N ordinary questions (0: all)."),
    config: Path | None = typer.Option(None, help="YAML config (model and redteam sections)."),
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Answer the guard half's harmful requests and ordinary questions with a model (offline vLLM,
    greedy, redteam.max_new_tokens) and label each answer: unsafe when a harmful request was not
    refused. `rlhf guard train` teaches the output classifier from these conversations."""
    from rlhf.models.loading import resolve_model_path
    from rlhf.models.paths import ModelError
    from rlhf.redteam.corpus import CorpusMissing
    from rlhf.redteam.guard_answers import answer_rows, write_conversations
    from rlhf.redteam.guard_train import CONVERSATIONS, DATA_DIR

    cfg = load(config, overrides)
    target = out_file or DATA_DIR / CONVERSATIONS
    try:
        # A progress callback turns on vLLM's own progress bar over the questions.
        rows = answer_rows(resolve_model_path(model), cfg, progress=lambda done, total: None, per_kind=per_kind)
    except (ModelError, CorpusMissing, OSError) as exc:
        fail(str(exc))
    write_conversations(rows, target, model)
    unsafe = sum(r["label"] == "unsafe" for r in rows)
    harmful = sum(r["harmful"] for r in rows)
    out.print(f"{len(rows)} conversations ({harmful} harmful requests, {unsafe} answered instead of refused) "
              f"in {target}", soft_wrap=True, markup=False, highlight=False)
