"""`rlhf serve`: start (or join) Ray, start Serve on host:port, deploy the QA app, wait for Ctrl-C."""

from __future__ import annotations

import os
import threading
import time

from rlhf.config.tree import Config

APP_NAME = "rlhf-qa"
# Serve settings for a local Ray started here (an explicit value in the environment wins; on an
# existing cluster set them where `ray start` runs). User code on the replica's own event loop,
# the proxy's router on its main loop and gRPC from proxy to replica: with the tiny model on 2
# busy cores, 9-18% more tokens/s than Serve's defaults in interleaved runs of bench/serve.py.
# Our handlers never block the loop (SQLite and classifiers run in threads). The proxy answers a
# request whose replica died with a 503 and Retry-After instead of a bare 500 (serve/proxy_errors.py).
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
             "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
             "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.proxy_errors:middlewares"}


def start_ray(cfg: Config) -> bool:
    """Join the configured cluster (resources.address or RAY_ADDRESS), else start a local Ray.
    Returns True when this call started Ray (so the caller stops it)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS") or ""
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)  # inherited by the Serve controller, proxy and replicas
    # "local" never attaches to another Ray that happens to run on this machine.
    needed = int(max(cfg.serve.num_replicas, cfg.serve.autoscale_max) * cfg.serve.cpus_per_replica + 0.999)
    num_cpus = cfg.resources.num_cpus or max(os.cpu_count() or 1, needed)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def live_config(registry: str) -> dict:
    """The replicas' user_config for the registry's live version."""
    from rlhf.lifecycle.registry import Registry, RegistryError

    live = Registry(registry).live()
    if live is None:
        raise RegistryError(f"{registry}: no version is live yet (rlhf models promote VERSION --registry {registry})")
    return {"model_path": live["path"], "version": live["version"]}


def start(model: str, cfg: Config, host: str, port: int, user_config: dict | None = None) -> tuple[str, bool]:
    """Deploy the app; returns (base URL, whether Ray was started here) once replicas are ready."""
    from ray import serve

    from serve.application import app_for

    app_for(model, cfg, user_config)  # config errors surface before Ray starts
    started_ray = start_ray(cfg)
    try:
        application = app_for(model, cfg, user_config)  # with `auto`, the cluster's nodes pick the feedback store
        serve.start(http_options={"host": host, "port": port}, proxy_location=cfg.serve.proxy_location)
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    except BaseException:
        stop(started_ray)
        raise
    return f"http://{host}:{port}", started_ray


def stop(started_ray: bool) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


def follow(model: str, cfg: Config, registry: str, current: dict | None, log=print, name: str = APP_NAME) -> dict:
    """When the registry's live version changed, move the replicas to it in place (Serve calls
    their `reconfigure`; the init arguments stay, so no replica restarts). Returns what is served."""
    from ray import serve

    from serve.application import app_for

    wanted = live_config(registry)
    if wanted != current:
        started = time.perf_counter()
        serve.run(app_for(model, cfg, wanted), name=name, route_prefix="/", blocking=False)
        log(f"serving {wanted['version']} ({wanted['model_path']}), swapped in {time.perf_counter() - started:.1f} s")
    return wanted


def serve_forever(model: str, cfg: Config, host: str, port: int, on_ready=print, registry: str = "",
                  log=print) -> None:
    """Run until Ctrl-C or SIGTERM; then shut Serve (and a Ray started here) down. With a
    registry, serve its live version and follow promotions and rollbacks while running."""
    import signal

    current = live_config(registry) if registry else None
    model = current["model_path"] if current else model
    url, started_ray = start(model, cfg, host, port, current)
    done = threading.Event()
    # Explicit handlers: a shell that starts us in the background ignores SIGINT otherwise.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        on_ready(url)
        while not done.wait(1.0):
            if registry:
                current = follow(model, cfg, registry, current, log)
    except KeyboardInterrupt:
        pass
    finally:
        stop(started_ray)
