"""Production monitoring: per-version sums over replicas and nodes from Ray's metrics export
format, histogram quantiles, drift flags and plots by hand, and `rlhf monitor` against a real
HTTP metrics endpoint."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest
from typer.testing import CliRunner

from rlhf.config.workflow import MonitorConfig
from rlhf.lifecycle import monitor as mon
from rlhf.lifecycle.triggers import due

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0)


def _series(name: str, value: float, worker: str, node: str, **labels) -> str:
    """One sample as Ray's metrics agent exports it (process labels included)."""
    tags = {"Component": "core_worker", "NodeAddress": node, "SessionName": "s", "Version": "2.60.0",
            "WorkerId": worker, **labels}
    return f"ray_rlhf_qa_{name}{{{','.join(f'{k}={json.dumps(v)}' for k, v in tags.items())}}} {value}"


def _replica(worker: str, node: str, version: str, answered: int, blocked: int, up: int, down: int,
             seconds: list[float], completion: int, errors: int = 0) -> list[str]:
    v = {"version": version}
    lines = [_series("answers_total", answered, worker, node, outcome="answered", **v),
             _series("answers_total", blocked, worker, node, outcome="blocked", **v),
             _series("requests_total", answered + blocked, worker, node, route="/ask", status="200", **v),
             _series("tokens_total", completion, worker, node, kind="completion", **v),
             _series("guard_decisions_total", blocked, worker, node, stage="input", reason="prompt_injection", **v),
             _series("guard_decisions_total", answered, worker, node, stage="input", reason="ok", **v),
             _series("feedback_total", up, worker, node, kind="thumbs_up", **v),
             _series("feedback_total", down, worker, node, kind="thumbs_down", **v)]
    if errors:
        lines.append(_series("requests_total", errors, worker, node, route="/ask", status="503", **v))
    for le in (*BUCKETS, float("inf")):
        count = sum(s <= le for s in seconds)
        lines.append(_series("answer_seconds_bucket", count, worker, node, le="+Inf" if le == float("inf") else
                             str(le), **v))
    lines += [_series("answer_seconds_sum", sum(seconds), worker, node, **v),
              _series("answer_seconds_count", len(seconds), worker, node, **v)]
    return lines


def _text(*replicas: list[str]) -> str:
    head = ["# HELP ray_rlhf_qa_answers_total Answers.", "# TYPE ray_rlhf_qa_answers_total counter",
            "# HELP ray_rlhf_qa_answer_seconds Time.", "# TYPE ray_rlhf_qa_answer_seconds histogram"]
    return "\n".join(head + [line for r in replicas for line in r]) + "\n"


# Two replicas on two nodes serve v2; one of them still has v1's series from before the swap.
TEXT = _text(_replica("w1", "10.0.0.1", "v2", answered=30, blocked=2, up=4, down=1, seconds=[0.2] * 32,
                      completion=150),
             _replica("w2", "10.0.0.2", "v2", answered=18, blocked=0, up=1, down=4, seconds=[0.7] * 18,
                      completion=90, errors=1),
             _replica("w1", "10.0.0.1", "v1", answered=5, blocked=0, up=0, down=0, seconds=[0.04] * 5,
                      completion=10))


def test_series_of_every_replica_and_node_add_up_per_version():
    versions = mon.per_version(TEXT)
    assert set(versions) == {"v1", "v2"}
    v2 = versions["v2"]
    assert v2["answers"] == {"answered": 48, "blocked": 2}
    assert v2["feedback"] == {"thumbs_up": 5, "thumbs_down": 5}
    assert v2["requests"] == {"200": 50, "503": 1}
    assert v2["answer_seconds"]["buckets"][0.25] == 32 and v2["answer_seconds"]["buckets"][float("inf")] == 50
    nums = mon.numbers(v2)
    assert (nums["answers"], nums["thumbs"], nums["thumbs_down_rate"]) == (50, 10, 0.5)
    assert nums["guard_block_rate"] == pytest.approx(2 / 50)
    assert nums["mean_answer_tokens"] == pytest.approx(240 / 48)
    assert nums["error_rate"] == pytest.approx(1 / 51)
    assert nums["guard_blocks"] == {"prompt_injection": 2}
    # 32 answers in (0.1, 0.25], 18 in (0.5, 1]: the median rank 25 lies in the first of them.
    assert nums["p50_s"] == pytest.approx(0.1 + 0.15 * 25 / 32)
    assert nums["p95_s"] == pytest.approx(0.5 + 0.5 * (47.5 - 32) / 18)
    assert mon.numbers(versions["v1"])["thumbs_down_rate"] is None  # no thumbs: no rate


def test_quantile_by_hand():
    assert mon.quantile({1.0: 0, 2.0: 10, float("inf"): 10}, 0.5) == pytest.approx(1.5)
    assert mon.quantile({1.0: 4, float("inf"): 8}, 0.9) == 1.0  # beyond the last bound: the bound
    assert mon.quantile({1.0: 0, float("inf"): 0}, 0.5) is None


def test_drift_flags_name_the_number_and_its_bound():
    nums = mon.numbers(mon.per_version(TEXT)["v2"])
    bounds = MonitorConfig(max_thumbs_down_rate=0.3, max_p95_latency_s=0.5, max_error_rate=0.05)
    flags = mon.drift(nums, {"answer_length": 1.5}, bounds)
    assert flags == ["thumbs-down rate 0.5 > 0.3", "p95 answer time (s) 0.931 > 0.5",
                     "answer length 5.0 tokens vs 1.5 in evaluation (x3.33, bound x2)"]
    assert mon.drift(nums, {"answer_length": 4.0}, MonitorConfig(max_thumbs_down_rate=0.6, max_error_rate=0.05)) == []
    assert mon.drift(nums, {}, MonitorConfig(min_answers=51, max_thumbs_down_rate=0.1)) == []  # too few answers


def test_history_plot_and_the_drift_trigger(tmp_path):
    history = tmp_path / "monitor" / "history.jsonl"
    live = {"version": "v2", "evaluation": {"answer_length": 1.5}}
    entry = mon.reading(TEXT, live, MonitorConfig())
    assert entry["live"] == "v2" and entry["baseline"] == {"answer_length": 1.5}
    assert entry["drift"] == ["thumbs-down rate 0.5 > 0.3", "5xx rate 0.0196 > 0.01",
                              "answer length 5.0 tokens vs 1.5 in evaluation (x3.33, bound x2)"]
    mon.append(history, entry)
    mon.append(history, {**entry, "time": entry["time"] + 60})
    assert len(mon.load_history(history)) == 2
    png = mon.plot(mon.load_history(history), tmp_path / "monitor.png", MonitorConfig())
    assert png.stat().st_size > 5000

    class NoFeedback:  # the drift condition reads only the history
        def read(self, sql, args):
            return [{"n": 0}]

    ok, why, counts = due("thumbs_down>=5,drift", NoFeedback(), tmp_path / "rounds", history)
    assert ok and counts == {"thumbs_down": 0, "drift": 3} and "drift 3 >= 1" in why
    (tmp_path / "rounds" / "round-001").mkdir(parents=True)
    report = tmp_path / "rounds" / "round-001" / "report.json"
    report.write_text("{}")
    os.utime(report, (entry["time"] + 120, entry["time"] + 120))  # a round finished after the readings
    assert not due("drift", NoFeedback(), tmp_path / "rounds", history)[0]
    history.write_text(history.read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:3: not a JSON reading"):
        mon.load_history(history)


@pytest.fixture
def metrics_url():
    body = TEXT.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()


def test_monitor_command_prints_the_live_version_against_its_baseline(tmp_path, metrics_url):
    from rlhf.cli.main import app
    from rlhf.lifecycle.registry import Registry
    from rlhf.models.tiny import build_tiny_model

    reg = Registry(tmp_path / "registry")
    reg.register(build_tiny_model(tmp_path / "m"), source="manual")
    reg.register(tmp_path / "m", source="manual", evaluation={"passed": True, "answer_length": 1.5})
    reg.promote("v2")
    history = tmp_path / "history.jsonl"
    result = CliRunner().invoke(app, ["monitor", "--registry", str(reg.root), "--metrics-url", metrics_url,
                                      f"monitor.history={history}"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "v2 (live)" in text and "thumbs-down rate" in text and "DRIFT on v2: thumbs-down rate 0.5 > 0.3" in text
    assert "guard blocks of the live version by reason: prompt_injection 2" in text
    assert history.with_suffix(".png").is_file() and len(mon.load_history(history)) == 1
    down = CliRunner().invoke(app, ["monitor", "--metrics-url", "http://127.0.0.1:9/metrics",
                                    f"monitor.history={history}"])
    assert down.exit_code == 2
    assert "cannot read metrics from http://127.0.0.1:9/metrics" in " ".join(down.output.split())
