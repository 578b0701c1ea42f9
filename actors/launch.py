"""Start the four roles as Ray actors in their placement group, and run `rlhf train` on them:
prepare the run directory, start the roles, run the Trainer, export, report."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors import placement
from actors.gpu_weights import GPU_TRANSPORTS, choose_transport
from actors.learner import LearnerGroup, LearnerRank
from actors.recovery import ActorFailed, FailureLog, RetryingHandle, get, restart_options
from actors.reference import ReferenceActor
from actors.reward import RewardActor
from actors.rollout import RolloutActor
from rlhf.cluster.resources import Layout, actor_resources, check_fits, reference_role, role_bundles
from rlhf.cluster.session import live_nodes, multi_node
from rlhf.config.tree import Config, dump_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.models.loading import load_tokenizer
from rlhf.models.runtime import preflight
from rlhf.rl.batch import Rollout, pad_float_lists, unpack
from rlhf.rl.trainer import Roles, Trainer
from rlhf.tracking import MetricsLog


class EngineClient(RetryingHandle):
    """One rollout engine. Ray restarts a dead one in place (on host weight transports), and the
    weights last published are loaded into it again before the call is sent again."""

    restores = "weights loaded again"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packet = None  # the last WeightPacket sent to this engine

    def restore(self) -> None:
        if self.packet is not None:
            get(self.role, self.actor.load_weights.remote(self.packet))

    def load_weights(self, packet) -> Future:
        self.packet = packet
        return self.call("load_weights", packet)


class RolloutGroup:
    """Splits prompts across engines and joins their samples back in prompt order."""

    def __init__(self, engines: list[EngineClient]):
        self.engines = engines

    def generate(self, prompt_ids, prompt_index, seed: int) -> Rollout:
        k = len(self.engines)
        parts = [e.call("generate", prompt_ids[i::k], prompt_index[i::k], seed + i) for i, e in enumerate(self.engines)]
        return Rollout.concat([part.result() for part in parts]).sorted_by_prompt()

    def load_weights(self, packet) -> float:
        return max([f.result() for f in [e.load_weights(packet) for e in self.engines]])

    def logprobs(self, prompt_ids, response_ids):
        return self.engines[0].call("logprobs", prompt_ids, response_ids).result()

    def base_logprobs(self, prompt_ids, response_ids) -> list[list[float]]:
        """Logprobs under the engines' base weights (adapter off), rows split across engines."""
        k = len(self.engines)
        parts = [e.call("base_logprobs", prompt_ids[i::k], response_ids[i::k]) for i, e in enumerate(self.engines)]
        out: list = [None] * len(prompt_ids)
        for i, part in enumerate(parts):
            out[i::k] = part.result()
        return out


class RewardClient(RetryingHandle):
    def score_async(self, *args) -> Future:
        return self.call("score", *args)


class ReferenceClient(RetryingHandle):
    def logprobs_async(self, *args) -> Future:
        return self.call("logprobs", *args)


class EngineReference:
    """The reference as the rollout engines' base weights (LoRA, reference = initial policy;
    rlhf/cluster/resources.py reference_role): no reference actor and no second model copy."""

    def __init__(self, engines, pool: ThreadPoolExecutor):
        self.engines, self.pool = engines, pool

    def logprobs_async(self, sequences, attention_mask, prompt_len: int, response_len: int) -> Future:
        def run():
            prompts, responses = unpack(sequences, attention_mask, prompt_len)
            return pad_float_lists(self.engines.base_logprobs(prompts, responses), response_len)

        return self.pool.submit(run)


_STARTED_RAY = False  # True when this process started Ray (and so should stop it)
_GROUPS: dict = {}  # run id -> placement group; removing it stops the run's actors


def init_ray(cfg: Config) -> None:
    """Join the configured cluster, or an already connected one (e.g. inside a Tune trial),
    or start a local Ray."""
    import ray

    from rlhf.cluster.session import start_local

    global _STARTED_RAY
    if ray.is_initialized():
        return
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("RLHF_", "HF_", "VLLM_", "DS_"))}}
    if address:
        _STARTED_RAY = True
        ray.init(address=address, runtime_env=env, log_to_driver=False)
        return
    # On one CPU box the roles take turns (generate, then score, then update), so logical CPUs
    # may exceed physical cores; each actor still gets torch threads = its bundle's CPUs.
    needed = role_bundles(cfg).total("CPU")
    num_cpus = cfg.resources.num_cpus or max(os.cpu_count() or 1, int(needed + 0.999))
    _STARTED_RAY = start_local(num_cpus, runtime_env=env)


def start_roles(cfg: Config, model_path: str, ref_path: str, run_id: str, failures: FailureLog | None = None,
                record: Path | None = None) -> Roles:
    """Reserve the placement group, start every actor, wait until all are ready. Reward and
    reference actors come back after a death (actors/recovery.py); `failures` logs it. `record`:
    a JSON file to write where each actor landed, the weight transport and the learner's address."""
    import ray

    init_ray(cfg)
    layout = role_bundles(cfg)
    check_fits(layout, ray.cluster_resources())
    pg, offset = _enclosing_group(layout)
    # The project's layout gives engines GPUs of their own, never the learner's (colocated=False).
    transport = choose_transport(cfg.rollout.weight_sync, cfg.resources.use_gpu, multi_node(), False)
    if pg is None:
        pg, offset = placement.reserve(layout), 0
        _GROUPS[run_id] = pg  # ours to remove; an enclosing group belongs to its creator

    def spawn(cls, role: str, index: int, *args):
        res = actor_resources(cfg, role, layout)
        opts = {"num_cpus": res.get("CPU", 0), "num_gpus": res.get("GPU", 0),
                "scheduling_strategy": placement.strategy(pg, offset + layout.slots[role][index]),
                **restart_options(role, cfg.train.max_failures, transport in GPU_TRANSPORTS)}
        return ray.remote(cls).options(**opts).remote(*args)

    rendezvous: dict = {}

    def start_learner() -> list:
        """The learner ranks, in their bundles and joined in one process group."""
        ranks = [spawn(LearnerRank, "learner", i, cfg, model_path, i, cfg.learner.num_ranks, run_id)
                 for i in range(cfg.learner.num_ranks)]
        addr, port = rendezvous["address"] = get("learner", ranks[0].address.remote())
        get("learner", [r.setup.remote(addr, port) for r in ranks])
        return ranks

    engines = [spawn(RolloutActor, "rollout", i, cfg, model_path, run_id, i) for i in range(cfg.rollout.num_engines)]
    reward = spawn(RewardActor, "reward", 0, cfg)
    reference = spawn(ReferenceActor, "reference", 0, cfg, ref_path) if reference_role(cfg) == "actor" else None
    ranks = start_learner()  # the other roles start meanwhile
    get("rollout", [e.info.remote() for e in engines])
    pool = ThreadPoolExecutor(max_workers=4 + len(engines))
    if record is not None:
        actors = {"rollout": engines, "learner": ranks, "reward": [reward], "reference": [reference]}
        _record_placement(record, actors, transport, rendezvous["address"][0])
    if transport in GPU_TRANSPORTS:
        addr, port = get("learner", ranks[0].address.remote())  # a second free port, for vLLM's group
        get("learner", [r.connect_engines.remote(engines, addr, port) for r in ranks])
    retries = cfg.train.max_failures
    rollout = RolloutGroup([EngineClient("rollout", e, pool, retries, failures) for e in engines])
    references = {"actor": lambda: ReferenceClient("reference", reference, pool, retries, failures),
                  "engine": lambda: EngineReference(rollout, pool), None: lambda: None}
    return Roles(
        rollout=rollout,
        reward=RewardClient("reward", reward, pool, retries, failures),
        reference=references[reference_role(cfg)](),
        # On a GPU transport new ranks would need the engines to join a new process group too.
        learner=LearnerGroup(ranks, transport, get=lambda refs: get("learner", refs),
                             start=None if transport in GPU_TRANSPORTS else start_learner),
        num_ranks=cfg.learner.num_ranks,
    )


def _record_placement(record: Path, actors: dict[str, list], transport: str, learner_address: str) -> None:
    """placement.json: where each role's actors landed, the weight transport, the learner's address."""
    where = {role: get(role, [a.where.remote() for a in group if a is not None]) for role, group in actors.items()}
    record.write_text(json.dumps({"roles": where, "weight_sync": transport, "learner_address": learner_address,
                                  "nodes": live_nodes()}, indent=1))


def _enclosing_group(layout: Layout):
    """The placement group this process runs in when its last bundles are exactly the run's
    layout (a Ray Tune trial reserves [trial] + role bundles), with the index of the first role
    bundle; else (None, 0). Reserving a second group there would hold every resource twice."""
    from ray.util.placement_group import get_current_placement_group

    pg = get_current_placement_group()
    n = len(layout.bundles)
    if pg is None or len(pg.bundle_specs) < n:
        return None, 0
    offset = len(pg.bundle_specs) - n
    if pg.bundle_specs[offset:] != layout.bundles:
        return None, 0
    return pg, offset


def shutdown(run_id: str, stop_ray: bool = True) -> None:
    """Remove the run's placement group (which ends its actors) and its shared-memory weights;
    then stop Ray if this process started it, unless a rebuild of the roles follows."""
    import ray

    from actors.weights import cleanup

    cleanup(run_id)
    pg = _GROUPS.pop(run_id, None)
    if pg is not None and ray.is_initialized():
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
    if stop_ray:
        _stop_ray()


def _stop_ray() -> None:
    import ray

    global _STARTED_RAY
    if _STARTED_RAY and ray.is_initialized():
        ray.shutdown()
        _STARTED_RAY = False


SUMMARY_KEYS = ("reward/mean", "objective/kl", "objective/entropy", "loss/policy", "rollout/logprob_diff",
                "timing/step", "perf/samples_per_second")


def prepare_run_dir(cfg: Config, run_dir: Path | None, resume: bool) -> Path:
    path = Path(run_dir) if run_dir else Path("runs") / cfg.train.name
    state = path / "checkpoints" / "trainer_state.json"
    if resume and not state.exists():
        raise ConfigError(f"--resume: no checkpoint in {path / 'checkpoints'}")
    if not resume and state.exists():
        raise ConfigError(f"{path} already holds a run; pass --resume to continue it or choose another --run-dir")
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, path / "config.yaml")
    return path


def run_training(cfg: Config, run_dir: Path | None = None, resume: bool = False,
                 console: Console | None = None, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train per `cfg` in `run_dir`; `on_step(step, metrics)` is called after every step.

    When a learner rank dies, the learner group starts again and resumes from the last
    checkpoint; when that cannot be (no checkpoint yet, a GPU weight transport) or another role
    is lost for good, every role is rebuilt and the run resumes from the last checkpoint; up to
    train.max_failures deaths in all (actors/recovery.py)."""
    console = console or Console(stderr=True)
    model_path, ref_path = preflight(cfg)
    path = prepare_run_dir(cfg, run_dir, resume)
    failures = FailureLog(path)
    started, since = time.perf_counter(), None
    try:
        while True:
            try:
                rows = _attempt(cfg, path, (model_path, ref_path), resume or since is not None, console, on_step,
                                failures, since)
                break
            except ActorFailed as exc:
                rebuild = exc.died and failures.count < cfg.train.max_failures
                since = failures.failed(exc, "rebuild, resume from the last checkpoint" if rebuild else "stop")
                if not rebuild:
                    raise
                console.print(f"[yellow]{exc.role} actor died on {exc.node or 'its node'} after step "
                              f"{failures.step}; rebuilding the roles from the last checkpoint (failure "
                              f"{failures.count} of at most {cfg.train.max_failures})")
    finally:
        _stop_ray()
    console.print(summary_table(rows, time.perf_counter() - started, path))
    return path


def _attempt(cfg: Config, path: Path, models: tuple[str, str], resume: bool, console: Console,
             on_step: Callable | None, failures: FailureLog, since: float | None) -> list[dict]:
    """Start the roles, resume when asked (from the last checkpoint, if any), train, export."""
    run_id = uuid.uuid4().hex[:8]
    try:
        with console.status("starting Ray actors: rollout (vLLM), reward, reference, learner (ZeRO-3)"):
            roles = start_roles(cfg, *models, run_id, failures, record=path / "placement.json")
        with Progress(TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("train", total=cfg.train.steps, info="")

            def progress(step: int, m: dict) -> None:
                failures.step = step
                info = f"reward {m['reward/mean']:.3f}  kl {m['objective/kl']:.4f}  {m['timing/step']:.1f}s/step"
                bar.update(task, completed=step, info=info)
                if on_step is not None:
                    on_step(step, m)

            trainer = Trainer(cfg, roles, path, load_tokenizer(models[0]), progress)
            has_checkpoint = (trainer.checkpoint_dir / "trainer_state.json").exists()
            failures.step = start_step = trainer.resume() if resume and has_checkpoint else 0
            if since is not None:
                failures.recovered("all", since, start_step)
            bar.update(task, completed=start_step)
            rows = _train(trainer, path, start_step, failures, console)
        if cfg.train.export:
            with console.status("exporting the policy"):
                roles.learner.export(str(path / "model"))
    finally:
        shutdown(run_id, stop_ray=False)  # Ray itself stays up for a rebuild
    return rows


def _train(trainer: Trainer, path: Path, start_step: int, failures: FailureLog, console: Console) -> list[dict]:
    """trainer.run from `start_step`. When a learner rank dies and a checkpoint exists, only the
    learner group starts again and resumes from it; the engines get its weights, the other roles
    keep running. Any other death goes up to `run_training`, which rebuilds every role."""
    while True:
        log = MetricsLog(path, resume_step=start_step)
        try:
            return trainer.run(log)
        except ActorFailed as exc:
            if not _restarts_learner(exc, trainer, failures):
                raise
            since = failures.failed(exc, "learner group restarted, resume from the last checkpoint")
            console.print(f"[yellow]learner rank died on {exc.node or 'its node'} after step {failures.step}; "
                          f"restarting the learner group from the last checkpoint (failure {failures.count} of "
                          f"at most {trainer.cfg.train.max_failures})")
        finally:
            log.close()
        trainer.roles.learner.restart()
        failures.step = start_step = trainer.resume()
        failures.recovered("learner", since, start_step)


def _restarts_learner(exc: ActorFailed, trainer: Trainer, failures: FailureLog) -> bool:
    return (exc.died and exc.role == "learner" and trainer.roles.learner.start is not None
            and failures.count < trainer.cfg.train.max_failures
            and (trainer.checkpoint_dir / "trainer_state.json").exists())


def summary_table(rows: list[dict], seconds: float, path: Path) -> Table:
    table = Table(title=f"run {path} ({seconds:.0f} s)")
    table.add_column("metric")
    table.add_column("first", justify="right")
    table.add_column("last", justify="right")
    for key in SUMMARY_KEYS:
        values = [r[key] for r in rows if key in r]
        if values:
            table.add_row(key, f"{values[0]:.4g}", f"{values[-1]:.4g}")
    return table
