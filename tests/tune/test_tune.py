"""Ray Tune sweeps: search spaces and every bad-input error (fast, no Ray), then one tiny real
sweep that is interrupted, resumed, and whose best config is a whole run config (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError, to_dict
from tune import checks, report
from tune.space import SpaceError, load_space, parse_space, trial_config, trial_count, variants

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-tune.yaml"


@pytest.fixture
def cfg():
    return load_config(EXAMPLE)


def space_of(cfg, text: str):
    return parse_space(yaml.safe_load(text), cfg)


def rlhf(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def rlhf_with_ray(*args: str) -> subprocess.CompletedProcess:
    """`rlhf` once more when a local Ray failed to start: Ray gives its raylet a fixed 30 s to
    register, which a machine busy with other jobs can miss. Nothing ran in the failed attempt."""
    proc = rlhf(*args)
    if proc.returncode != 0 and "timed out during startup" in proc.stderr:
        proc = rlhf(*args)
    return proc


# ----------------------------------------------------------------------------- spaces


def test_space_parses_tune_vocabulary_flat_and_nested(cfg):
    space = space_of(cfg, """
algo.kl_coef: {loguniform: [0.001, 0.1]}
learner: {lr: {choice: [0.001, 0.003]}, warmup_steps: {randint: [0, 3]}}
rollout.n_samples: {grid_search: [2, 4]}
rollout.temperature: {quniform: [0.5, 1.5, 0.25]}
train.steps: 5
""")
    assert {k: p.kind for k, p in space.items()} == {
        "algo.kl_coef": "loguniform", "learner.lr": "choice", "learner.warmup_steps": "randint",
        "rollout.n_samples": "grid_search", "rollout.temperature": "quniform", "train.steps": "value"}
    assert space["learner.warmup_steps"].candidates() == [0, 2]  # randint excludes its upper bound
    assert space["rollout.n_samples"].candidates() == [2, 4]
    assert trial_count(space, num_samples=3) == 6  # each sample covers the whole grid


def test_space_builds_tune_domains(cfg):
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    space = space_of(cfg, "algo.kl_coef: {loguniform: [0.001, 0.1]}\nlearner.warmup_steps: {qrandint: [0, 4, 2]}\n"
                          "learner.lr: {choice: [0.001, 0.003]}\nrollout.n_samples: {grid_search: [2, 4]}\n")
    domains = {k: p.to_tune() for k, p in space.items()}
    assert isinstance(domains["algo.kl_coef"], Float)
    assert isinstance(domains["learner.warmup_steps"], Integer)
    assert isinstance(domains["learner.lr"], Categorical)
    assert domains["rollout.n_samples"] == tune.grid_search([2, 4])


def test_trial_config_takes_numpy_samples_and_round_trips(cfg, tmp_path):
    import numpy as np

    trial = trial_config(to_dict(cfg), {"rollout.n_samples": np.int64(2), "algo.kl_coef": np.float64(0.05)})
    assert trial.rollout.n_samples == 2 and type(trial.rollout.n_samples) is int
    assert trial.algo.kl_coef == 0.05 and cfg.algo.kl_coef == 0.01  # the base is untouched


def test_examples_make_a_valid_sweep(cfg):
    space = load_space(ROOT / "examples" / "tiny-space.yaml", cfg)
    configs = variants(space, cfg)
    checks.check_metric(cfg.tune.metric, configs)
    assert checks.trial_bundles(cfg) == [{"CPU": 1.0}] * 4  # trial, rollout, learner, reward+reference
    # kl_coef 0 drops the reference actor, but it shares a bundle with the reward actor anyway.
    assert checks.trial_needs(configs) == {"CPU": 4.0}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, message", [
    ("algo.kl_cof: {uniform: [0.0, 0.1]}", "'algo.kl_cof' is not a config field; did you mean 'algo.kl_coef'"),
    ("lerner: {lr: {choice: [0.1]}}", "'lerner' is not a config field; did you mean 'learner'"),
    ("algo: {clip: {uniform: [0.1, 0.3]}}", "'algo.clip' is not a config field; did you mean 'algo.clip_eps'"),
    ("algo: 0.1", "'algo' is a section, not a field"),
    ("tune.metric: {choice: [reward/mean]}", "configures the sweep itself"),
    ("algo.kl_coef: {uniform: [0.1, 0.1]}", "range [0.1, 0.1] is empty"),
    ("algo.kl_coef: {loguniform: [0.1, 0.01]}", "range [0.1, 0.01] is empty"),
    ("learner.warmup_steps: {randint: [3, 3]}", "range [3, 3] is empty"),
    ("algo.kl_coef: {loguniform: [0.0, 0.1]}", "lower bound > 0"),
    ("algo.kl_coef: {quniform: [0.0, 0.1, 0]}", "q > 0"),
    ("algo.kl_coef: {randn: [0.0, 0.0]}", "sd > 0"),
    ("learner.lr: {choice: []}", "choice needs a non-empty list"),
    ("rollout.n_samples: {grid_search: []}", "grid_search needs a non-empty list"),
    ("algo.kl_coef: {uniform: [0.1]}", "uniform takes 2 numbers [lower, upper]"),
    ("learner.warmup_steps: {randint: [0, 2.5]}", "randint takes 2 integers"),
    ("learner.micro_batch_size: {uniform: [4, 16]}", "integer field and uniform draws floats"),
    ("algo.name: {uniform: [0, 1]}", "is a str field; use choice or grid_search"),
    ("algo.kl_coef: {logunifrom: [0.001, 0.1]}", "did you mean 'loguniform'"),
    ("algo.name: {choice: [grpo, dqn]}", "algo.name='dqn' is not a valid config"),
    ("rollout.n_samples: {randint: [1, 4]}", "rollout.n_samples=1 is not a valid config"),
    ("rollout.n_samples: {grid_search: [2, 3]}", "does not divide"),
])
def test_bad_space_is_an_error_naming_the_key(cfg, text, message):
    cfg = trial_config(to_dict(cfg), {"learner.num_ranks": 8})  # 4 prompts x 3 samples cannot divide
    with pytest.raises(SpaceError) as info:
        space_of(cfg, text)
    assert message in str(info.value), str(info.value)


def test_space_file_errors(cfg, tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "missing.yaml", cfg)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(tmp_path / "empty.yaml", cfg)
    (tmp_path / "sci.yaml").write_text("learner.lr: {loguniform: [1e-4, 1e-2]}\n")  # YAML 1.2 floats
    assert load_space(tmp_path / "sci.yaml", cfg)["learner.lr"].args == (1e-4, 1e-2)


def test_metric_no_trial_reports_is_an_error(cfg):
    checks.check_metric("reward/numeric", [cfg])  # one component per rule reward
    with pytest.raises(ConfigError, match="no trial reports 'reward/mena'; did you mean 'reward/mean'"):
        checks.check_metric("reward/mena", [cfg])
    with pytest.raises(ConfigError, match="'loss/value'"):  # only PPO has a critic
        checks.check_metric("loss/value", [cfg])
    # Trials with kl_coef 0 run no reference model and report no KL loss.
    configs = variants(space_of(cfg, "algo.kl_coef: {choice: [0.0, 0.01]}"), cfg)
    checks.check_metric("loss/kl", configs[1:])
    with pytest.raises(ConfigError, match="some trials of this space do not report .loss/kl."):
        checks.check_metric("loss/kl", configs)


def test_more_concurrent_trials_than_resources_allow_is_an_error(cfg):
    needs = checks.trial_needs([cfg])
    assert needs == {"CPU": 4.0}
    cfg.tune.max_concurrent = 3
    with pytest.raises(ConfigError, match=r"tune.max_concurrent=3: .* room for 2 at once"):
        checks.check_concurrency(cfg, needs, {"CPU": checks.local_cpus(cfg, needs, cores=2)}, "this machine")
    with pytest.raises(ConfigError, match="room for 1"):
        checks.check_concurrency(cfg, needs, {"CPU": 7.0}, "the Ray cluster")
    with pytest.raises(ConfigError, match="one trial needs 4 CPU"):
        checks.check_concurrency(cfg, needs, {"CPU": 3.0}, "the Ray cluster")
    cfg.tune.max_concurrent = 0  # the resources decide
    assert checks.check_concurrency(cfg, needs, {"CPU": 12.0}, "the Ray cluster") == 3
    cfg.resources.num_cpus = 4  # an explicit local Ray size holds one trial
    assert checks.local_cpus(cfg, needs, cores=8) == 4.0
    gpu = trial_config(to_dict(cfg), {"resources.use_gpu": True})
    with pytest.raises(ConfigError, match="but the Ray cluster has 16 CPU, 0 GPU"):
        checks.check_concurrency(gpu, checks.trial_needs([gpu]), {"CPU": 16.0}, "the Ray cluster")


SFT_EXAMPLE = ROOT / "examples" / "tiny-sft-tune.yaml"


def test_finetune_sweeps_are_checked_for_their_stage():
    from tune import trial_plan

    sft = load_config(SFT_EXAMPLE)
    configs = variants(load_space(ROOT / "examples" / "tiny-sft-space.yaml", sft), sft)
    checks.check_metric("val/loss", configs)
    with pytest.raises(ConfigError,
                       match="no trial reports 'reward/mean'.*Every trial reports: seconds, step, val/loss"):
        checks.check_metric("reward/mean", configs)  # the RL metric means nothing to an SFT trial
    rm = trial_config(to_dict(sft), {"tune.stage": "rm", "rm.max_steps": 3, "rm.data": "pairs.jsonl"})
    checks.check_metric("val/accuracy", [rm])
    # The trial's group holds the trial process; Ray Train places its workers itself, and they
    # count in what one trial needs (so in how many run at once).
    assert checks.trial_bundles(sft) == [{"CPU": 0.01}]  # a token share: the trial only waits on Ray Train
    assert checks.trial_needs(configs) == {"CPU": 1.01}
    two = trial_config(to_dict(sft), {"sft.num_workers": 2})
    assert checks.trial_needs([two]) == {"CPU": 2.01}
    assert checks.local_cpus(two, {"CPU": 2.01}, cores=2) == 2.01  # two workers busy: one trial on 2 cores
    wide = trial_config(to_dict(sft), {"sft.cpus_per_worker": 2})  # one worker with both cores
    assert checks.trial_needs([wide]) == {"CPU": 2.01}
    with pytest.raises(ConfigError, match="lower sft.num_workers"):
        checks.check_concurrency(two, {"CPU": 2.01}, {"CPU": 2.0}, "the Ray cluster")
    # Length: one report before training, then one per step.
    assert trial_plan.planned_steps(sft) == 4 and trial_plan.reports(sft) == 5
    with pytest.raises(ConfigError, match="set sft.max_steps"):
        trial_plan.check_stage(trial_config(to_dict(sft), {"sft.max_steps": 0}))
    with pytest.raises(ConfigError, match="rm.data is empty"):
        trial_plan.check_stage(trial_config(to_dict(sft), {"tune.stage": "rm", "rm.max_steps": 3}))
    with pytest.raises(ConfigError, match="tune.stage"):
        trial_config(to_dict(sft), {"tune.stage": "ppo"})


def test_scheduler_errors(cfg):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from tune.sweep import make_scheduler

    grid = space_of(cfg, "rollout.n_samples: {grid_search: [2, 4]}")
    assert isinstance(make_scheduler(cfg, grid, 6), ASHAScheduler)
    cfg.tune.scheduler = "pbt"
    with pytest.raises(ConfigError, match="pbt perturbs sampled values"):
        make_scheduler(cfg, grid, 6)
    assert isinstance(make_scheduler(cfg, space_of(cfg, "learner.lr: {loguniform: [0.001, 0.01]}"), 6),
                      PopulationBasedTraining)
    # A PBT trial keeps its placement group when it takes another trial's values.
    checks.check_same_layout(variants(load_space(ROOT / "examples" / "tiny-space.yaml", cfg), cfg))
    with pytest.raises(ConfigError, match="trials of this space need different resources"):
        checks.check_same_layout(variants(space_of(cfg, "learner.num_ranks: {choice: [1, 2]}"), cfg))
    cfg.tune.scheduler = "fifo"
    assert isinstance(make_scheduler(cfg, grid, 6), FIFOScheduler)
    cfg.tune.grace_period = 7
    with pytest.raises(ConfigError, match="tune.grace_period=7 must be between 1 and train.steps=6"):
        make_scheduler(cfg, grid, 6)


def test_resumed_asha_remembers_the_rungs_of_ended_trials(tmp_path):
    from types import SimpleNamespace

    from pyarrow.fs import LocalFileSystem
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from tune.schedulers import ResumableASHA

    def trial(name: str, status: str, values: list[float]):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"training_iteration": i + 1, "m": v} for i, v in enumerate(values)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return SimpleNamespace(trial_id=name, status=status, path=str(folder),
                               storage=SimpleNamespace(storage_filesystem=LocalFileSystem()),
                               run_metadata=SimpleNamespace(last_result=rows[-1] if rows else {}))

    kwargs = dict(metric="m", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    for cls, expected in ((ResumableASHA, TrialScheduler.STOP), (ASHAScheduler, TrialScheduler.CONTINUE)):
        asha = cls(**kwargs)
        asha.on_trial_add(None, trial(f"{cls.__name__}-done", Trial.TERMINATED, [8.0, 8.0, 8.0, 8.0]))
        new = trial(f"{cls.__name__}-new", Trial.PENDING, [])
        asha.on_trial_add(None, new)
        assert asha.on_trial_result(None, new, {"training_iteration": 1, "m": 2.0}) == expected, cls


def test_run_dir_must_be_new_unless_resuming(cfg, tmp_path):
    from tune.sweep import check_run_dir, record_request

    space_file = ROOT / "examples" / "tiny-space.yaml"
    space = load_space(space_file, cfg)
    with pytest.raises(ConfigError, match="--resume: no sweep"):
        check_run_dir(tmp_path / "s", cfg, space, space_file, resume=True)
    check_run_dir(tmp_path / "s", cfg, space, space_file, resume=False)
    record_request(tmp_path / "s", cfg, space_file)
    assert load_config(tmp_path / "s" / "sweep.yaml") == cfg
    with pytest.raises(ConfigError, match="already holds a sweep; pass --resume"):
        check_run_dir(tmp_path / "s", cfg, space, space_file, resume=False)
    check_run_dir(tmp_path / "s", cfg, space, space_file, resume=True)
    other = trial_config(to_dict(cfg), {"learner.lr": 0.1})
    with pytest.raises(ConfigError, match=r"config differs from the sweep's \(learner.lr\)"):
        check_run_dir(tmp_path / "s", other, space, space_file, resume=True)
    (tmp_path / "other.yaml").write_text("learner.lr: {choice: [0.1, 0.2]}\n")
    with pytest.raises(ConfigError, match="differs from the sweep's space"):
        check_run_dir(tmp_path / "s", cfg, load_space(tmp_path / "other.yaml", cfg), tmp_path / "other.yaml", True)


def test_cli_rejects_a_bad_space_before_starting_anything(tmp_path):
    (tmp_path / "space.yaml").write_text("algo.kl_cof: {loguniform: [0.001, 0.1]}\n")
    started = time.perf_counter()
    proc = rlhf("tune", str(EXAMPLE), "--space", str(tmp_path / "space.yaml"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "'algo.kl_cof' is not a config field; did you mean 'algo.kl_coef'" in proc.stderr
    assert "Ray" not in proc.stderr and not (tmp_path / "run").exists() and time.perf_counter() - started < 60
    proc = rlhf("tune", str(EXAMPLE), "--space", str(ROOT / "examples" / "tiny-space.yaml"),
                "--metric", "reward/mena", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "did you mean 'reward/mean'" in proc.stderr, proc.stderr


def test_best_is_the_best_trial_that_ran_every_step():
    rows = [report.TrialRow("a", {}, report.STOPPED, 1, 4, 0.9), report.TrialRow("b", {}, report.DONE, 4, 4, 0.5),
            report.TrialRow("c", {}, report.DONE, 4, 4, 0.7), report.TrialRow("d", {}, report.ERROR, 0, 4, None)]
    assert [r.trial for r in report.ranked(rows, "max")] == ["a", "c", "b", "d"]
    assert report.best_row(rows, "max").trial == "c"
    assert report.best_row(rows, "min").trial == "b"
    assert report.best_row(rows[:1], "max").trial == "a"  # no complete trial: the best that reported


# ----------------------------------------------------------------------------- a real sweep

# Two trials that differ only in rollout.max_new_tokens, optimising the response length: the
# tiny random model rarely stops early, so the first trial (8 tokens) leads and ASHA (grace
# period 1, halving) must stop the 2-token trial at its first rung, after the resume.
SWEEP_SPACE = "rollout.max_new_tokens: {grid_search: [8, 2]}\n"
SWEEP_ARGS = ("train.steps=4", "train.save_every=2", "train.export=false", "rollout.n_samples=2",
              "algo.kl_coef=0.0", "tune.num_samples=1", "tune.grace_period=1", "tune.max_concurrent=1",
              "tune.metric=rollout/response_length", "tune.mode=max")


def file_states(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep exited early with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for the sweep:\n{log.read_text()[-3000:]}"
        time.sleep(1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """Run the sweep, interrupt it (SIGINT, as Ctrl-C) once the first trial has ended, resume it."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "space.yaml").write_text(SWEEP_SPACE)
    run_dir = root / "run"
    args = ["tune", str(EXAMPLE), *SWEEP_ARGS, "--space", str(root / "space.yaml"), "--run-dir", str(run_dir)]
    log = (root / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli.main", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        # The local Ray holds one trial, so Tune starts the second trial only once the first has
        # ended: a second trial run directory means the first is finished for Tune.
        wait_for(lambda: len(list((run_dir / "trials").glob("*"))) >= 2, proc, root / "first.log", timeout=900)
        proc.send_signal(signal.SIGINT)
        interrupted_code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    first = sorted((run_dir / "trials").iterdir())[0]
    before = {"summary": json.loads((run_dir / "summary.json").read_text()), "first": first.name,
              "best_config": (run_dir / "best_config.yaml").exists(),
              "run_files": file_states(first), "tune_files": file_states(run_dir / "tune" / first.name)}
    resumed = rlhf_with_ray(*args, "--resume")
    return {"run_dir": run_dir, "code": interrupted_code, "log": (root / "first.log").read_text(),
            "before": before, "resumed": resumed}


def statuses(summary: dict) -> dict[str, str]:
    return {t["trial"]: t["status"] for t in summary["trials"]}


@pytest.mark.slow
def test_interrupted_sweep_says_how_to_resume(sweep):
    assert sweep["code"] == 130, sweep["log"][-3000:]
    assert "--resume" in sweep["log"]
    assert "sweep interrupted with 1 of 2 trials unfinished" in sweep["log"]
    before = statuses(sweep["before"]["summary"])
    first = before.pop(sweep["before"]["first"])
    assert first == "done" and set(before.values()) == {"unfinished"}, before
    assert not sweep["before"]["best_config"]  # no winner before every trial has ended


@pytest.mark.slow
def test_resume_finishes_the_sweep_without_rerunning_finished_trials(sweep):
    proc = sweep["resumed"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir, first = sweep["run_dir"], sweep["before"]["first"]
    after = json.loads((run_dir / "summary.json").read_text())
    assert len(after["trials"]) == 2 and "unfinished" not in statuses(after).values(), statuses(after)
    # The finished trial's run and Tune's record of it were left alone.
    assert file_states(run_dir / "trials" / first) == sweep["before"]["run_files"]
    assert file_states(run_dir / "tune" / first) == sweep["before"]["tune_files"]


@pytest.mark.slow
def test_asha_stops_trials_early_and_the_best_config_is_a_run_config(sweep):
    run_dir = sweep["run_dir"]
    assert sweep["resumed"].returncode == 0, sweep["resumed"].stderr[-3000:]
    trials = {t["trial"]: t for t in json.loads((run_dir / "summary.json").read_text())["trials"]}
    stopped = [t for t in trials.values() if t["status"] == "stopped early"]
    assert stopped and all(t["steps"] < t["planned"] == 4 for t in stopped), trials
    for trial in stopped:  # Tune's own record agrees: fewer iterations than steps
        rows = (run_dir / "tune" / trial["trial"] / "result.json").read_text().splitlines()
        assert max(json.loads(r)["training_iteration"] for r in rows) < 4
    best = load_config(run_dir / "best_config.yaml")
    assert best.rollout.max_new_tokens == 8 and best.train.steps == 4
    assert (run_dir / "trials.png").stat().st_size > 1000
    assert "trials by rollout/response_length" in sweep["resumed"].stderr
    # `best` loaded with every check `rlhf train` runs on a config file; training from a config
    # file is tests/actors/test_rl.py's business, so it is not rerun here.
    assert best.algo.kl_coef == 0.0 and best.rollout.n_samples == 2


@pytest.mark.slow
def test_trials_report_exactly_the_metrics_the_checks_know(sweep):
    # Guards checks.reported_metrics against drift from what the RL loop logs.
    trial_dir = sweep["run_dir"] / "trials" / sweep["before"]["first"]
    logged = set(json.loads((trial_dir / "metrics.jsonl").read_text().splitlines()[-1]))
    assert logged == checks.reported_metrics(load_config(trial_dir / "config.yaml"))


@pytest.mark.slow
# With another Ray on the machine, the second SFT trial waited forever for its workers (Ray Train
# frees an ended trial's placement group through the dashboard's state API): it runs alone.
@pytest.mark.alone
def test_sft_sweep_stops_laggards_and_its_best_config_builds_an_sft_job(tmp_path):
    # Two real SFT trials (Ray Train + DeepSpeed), one at a time, a good learning rate and a
    # useless one: after the first update the slow learner trails the first trial at ASHA's rung.
    run_dir = tmp_path / "sweep"
    proc = rlhf_with_ray("tune", str(SFT_EXAMPLE), "--space", str(ROOT / "examples" / "tiny-sft-space.yaml"),
                         "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads((run_dir / "summary.json").read_text())["trials"]
    assert len(trials) == 2, trials
    by_lr = {t["params"]["sft.lr"]: t for t in trials}
    assert by_lr[0.003]["status"] == "done" and by_lr[0.003]["steps"] == 4, trials
    stopped = [t for t in trials if t["status"] == "stopped early"]
    assert stopped and all(t["steps"] < 4 for t in stopped), trials
    assert [p for _, p in by_lr[0.003]["history"]][-1] < by_lr[0.003]["history"][0][1]  # val/loss fell
    best = load_config(run_dir / "best_config.yaml")
    assert (best.tune.stage, best.sft.lr) == ("sft", 0.003)
    # `rlhf sft` takes the best config as it is: its SFT job builds (the data loads and tokenises).
    from rlhf.models.loading import resolve_model_path
    from rlhf.supervised.inputs import sft_job

    job = sft_job(best, resolve_model_path(best.model.path), tmp_path / "best")
    assert job.settings.lr == 0.003 and len(job.train) > 0
