"""One red-team run: build the attempts, send them to the target, judge every answer, write
hits.jsonl, report.json, report.md and attack_success.png, and apply the release gate.

    report = run_redteam(target, cfg, out_dir, log=print)
    report["gate"]["passed"]   # False: not releasable (`rlhf redteam` exits 3)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rlhf.redteam import report as rep
from rlhf.redteam.attacks import build
from rlhf.redteam.detectors import DETECTORS
from rlhf.redteam.split import REDTEAM

GATE_FAILED_EXIT = 3


def run_redteam(target, cfg, out_dir: str | Path, log: Callable[[str], None] = print, judge=None) -> dict:
    """Attack `target` (rlhf.redteam.targets) with the `redteam` section's suites."""
    r = cfg.redteam
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    attempts = build(r.suites, REDTEAM, r.seed, r.attempts, r.cases)
    log(f"[redteam] {len(attempts)} attempts ({', '.join(r.suites)}) against {target.name}")
    responses = target.respond([a.messages for a in attempts],
                               progress=lambda done, total: log(f"[redteam] {done}/{total} answered"))
    verdicts = [DETECTORS[a.suite](a, resp, judge) for a, resp in zip(attempts, responses)]
    with (out / "hits.jsonl").open("w") as f:
        for a, resp, v in zip(attempts, responses, verdicts):
            f.write(json.dumps({**a.as_dict(), "response": resp.text, "blocked": resp.blocked, "error": resp.error,
                                "success": v.success, "refused": v.refused, "why": v.why}) + "\n")
    report = {"target": target.name, "guardrails": bool(getattr(target, "guard", None)), "seed": r.seed,
              "attempts": len(attempts), "errors": sum(bool(x.error) for x in responses),
              **rep.categories(attempts, verdicts), "over_refusal": rep.over_refusal(attempts, verdicts),
              "bias_consistency": rep.bias_consistency(attempts, verdicts),
              "robustness": rep.robustness(attempts, verdicts)}
    report["robustness_drop"] = report["robustness"]["drop"] if report["robustness"] else None
    report["gate"] = rep.gate(report, r.gate)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(rep.markdown(report))
    if report["categories"]:
        rep.plot(report, out / "attack_success.png")
    verdict = "passed" if report["gate"]["passed"] else "FAILED: " + rep.failures(report["gate"])
    log(f"[redteam] gate {verdict}; report in {out / 'report.md'}")
    return report


def model_target(model_path: str, cfg):
    """A model folder behind the serve section's guardrails when redteam.guardrails is on."""
    import dataclasses

    from rlhf.redteam.guard_train import resolve_guard
    from rlhf.redteam.targets import ModelTarget
    from rlhf.safety.guard import Guard

    if not cfg.redteam.guardrails:
        return ModelTarget(model_path, cfg)
    s = dataclasses.replace(cfg.serve, input_guard=resolve_guard(cfg.serve.input_guard, "input"),
                            output_guard=resolve_guard(cfg.serve.output_guard, "output"))
    return ModelTarget(model_path, cfg, Guard(s))


def make_judge(cfg):
    """The optional LLM judge of redteam.judge_url, or None."""
    if not cfg.redteam.judge_url:
        return None
    from rlhf.redteam.judge import EndpointJudge

    return EndpointJudge(cfg.redteam.judge_url, cfg.redteam.judge_model)
