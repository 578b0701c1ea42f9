"""The QA endpoint on two Ray nodes: replicas on both, one feedback store.

Its own module: with a second Ray on the machine (test_serve.py's in-process one), Ray's own
lookups of "the" cluster address fail (seen in Ray Train's placement-group cleaner)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rlhf.human.feedback import FeedbackStore

# A cluster of two nodes started with `ray start`: no other Ray on the machine meanwhile.
pytestmark = pytest.mark.alone

KEY = "test-key"


@pytest.mark.slow
def test_replicas_on_two_nodes_write_to_one_feedback_store(two_ray_nodes, rating_users, free_port, tiny_model_dir,
                                                           tmp_path):
    """`rlhf serve` on a two-node cluster: a replica on each node behind the head's proxy, and
    the one FeedbackDB deployment (serve.feedback_store auto -> actor) owning the SQLite file.
    Every rating either replica acknowledged is in that file exactly once."""
    import signal
    import subprocess
    import sys

    import httpx

    db = tmp_path / "feedback.sqlite"
    # The head's proxy otherwise keeps every request on the head's replica while it keeps up.
    with two_ray_nodes(4, {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}) as nodes:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "rlhf.cli.main", "serve", "--model", tiny_model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--no-classifiers", f"resources.address={nodes.gcs}", "serve.num_replicas=2",
               "serve.max_replicas_per_node=1", "serve.proxy_location=HeadOnly", f"serve.feedback_db={db}",
               f"serve.api_keys=[{KEY}]", "serve.max_tokens_limit=64", "serve.default_max_tokens=8"]
        log = tmp_path / "serve.log"
        # Serve's own defaults (this module's fixture exports SERVE_ENV, which is for one machine).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        with open(log, "w") as out, subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stdout=out,
                                                     stderr=subprocess.STDOUT, env=env) as proc:
            try:
                replicas: dict[str, dict] = {}
                deadline = time.time() + 300
                while len(replicas) < 2 and time.time() < deadline and proc.poll() is None:
                    try:
                        health = httpx.get(f"{base}/healthz", timeout=10)
                        if health.status_code == 200:
                            replicas[health.json()["replica"]] = health.json()
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.5)
                assert len(replicas) == 2, log.read_text()[-3000:]
                users = rating_users(base, clients=4, key=KEY)
                for t in users.threads:
                    t.start()
                time.sleep(5)
                users.stop.set()
                for t in users.threads:
                    t.join(timeout=120)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    assert len({r["node_id"] for r in replicas.values()}) == 2, replicas  # one replica on each node
    assert {r["feedback_store"] for r in replicas.values()} == {"actor"}
    assert all(s == 200 for _, _, s in users.outcomes), [o for o in users.outcomes if o[2] != 200]
    store = FeedbackStore(db)
    try:
        stored = store.read("SELECT answer_id, COUNT(*) AS n FROM feedback GROUP BY answer_id")
        answers = store.read("SELECT COUNT(*) AS n FROM answers")[0]["n"]
    finally:
        store.close()
    print(f"\ntwo nodes: {len(users.outcomes)} requests, {len(users.acked)} ratings acknowledged, "
          f"{sum(r['n'] for r in stored)} stored, {answers} answers")
    assert len(users.acked) > 10
    # Nothing lost, nothing doubled: each acknowledged rating once, and no row nobody acknowledged.
    assert {r["answer_id"]: r["n"] for r in stored} == {i: users.acked.count(i) for i in set(users.acked)}
    assert answers == len([o for o in users.outcomes if o[1] == "/ask"])
