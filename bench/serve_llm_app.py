"""Ray Serve's own LLM stack (`ray.serve.llm.build_openai_app`: an OpenAI ingress in front of an
`LLMServer` replica) on a CPU-only local Ray, for bench/serve.py to load beside `rlhf serve`.

    .venv/bin/python bench/serve_llm_app.py MODEL_PATH PORT MODEL_NAME MAX_MODEL_LEN

Stock settings except what CPU needs: a placement group of one CPU bundle (without one, Ray Serve
LLM asks for a GPU and waits forever), two logical CPUs beyond the cores (below), fp32 and eager
mode as the other servers run. Serve's own
runtime settings are the ones `rlhf serve` starts a local Ray with (serve/run.py SERVE_ENV), so
the two differ by the replica code only. Runs until SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def llm_app(model: str, name: str, max_model_len: int):
    from ray.serve.llm import LLMConfig, build_openai_app

    config = LLMConfig(
        model_loading_config={"model_id": name, "model_source": model},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"num_replicas": 1},
        engine_kwargs={"max_model_len": max_model_len, "enforce_eager": True, "dtype": "float32", "seed": 0},
    )
    return build_openai_app({"llm_configs": [config]})


def main() -> None:
    model, port, name, max_model_len = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    from serve.run import SERVE_ENV

    for key, value in SERVE_ENV.items():
        if "PROXY_CALLBACK" not in key:  # our proxy's 503 middleware is ours, not Serve's
            os.environ.setdefault(key, value)
    import ray
    from ray import serve

    # Logical CPUs beyond the cores: the engine's placement group bundle, the ingress replica and
    # the model-files task the LLMServer runs before it starts its engine each take one, and with
    # only the 2 cores counted the ingress and that task are never scheduled.
    ray.init(address="local", num_cpus=(os.cpu_count() or 1) + 2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(llm_app(model, name, max_model_len), blocking=False)
    print(f"ray.serve.llm ready on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
