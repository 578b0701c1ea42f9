"""The `rlhf` command line, driven in-process with typer's CliRunner (no Ray, no engines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from rlhf.cli.main import app
from rlhf.config.tree import Config, load_config

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

runner = CliRunner()

TOP_LEVEL = ["train", "sft", "rm", "dpo", "eval", "pipeline", "serve", "tune", "submit", "data", "models", "monitor"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone, for substring checks."""
    return " ".join(text.split())


def all_command_paths():
    """Every command and sub-command, as argument lists: ["train"], ["data", "validate"], ..."""
    paths = []
    for name, cmd in get_command(app).commands.items():
        paths.append([name])
        for sub in getattr(cmd, "commands", {}):
            paths.append([name, sub])
    return paths


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  steps: 3\nalgo:\n  kl_coef: 0.1\n")
    return path


# ----------------------------------------------------------------------------- help


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0, result.output
    for name in TOP_LEVEL + ["config"]:
        assert name in result.output, name


def test_no_arguments_shows_help():
    result = run()
    assert "train" in result.output and "Usage" in result.output


def test_command_tree_is_complete():
    paths = {" ".join(p) for p in all_command_paths()}
    assert set(TOP_LEVEL) <= paths
    assert {"data validate", "data pairs", "models prepare", "models tiny", "config show"} <= paths


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_every_command_has_help(path):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_python_dash_m_runs_the_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.cli.main", "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for name in TOP_LEVEL:
        assert name in proc.stdout


# ----------------------------------------------------------------------------- unbuilt commands


def test_a_command_checks_its_config_first(tmp_path):
    result = run("sft", tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "config file not found" in flat(result.output)


# ----------------------------------------------------------------------------- train


@pytest.fixture
def no_ray_start(monkeypatch):
    """Make reaching the actor code an ImportError, so a config error must stop `train` first."""
    monkeypatch.setitem(sys.modules, "actors.launch", None)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.mark.usefixtures("no_ray_start")
def test_train_config_error_exits_2_before_ray(config_file):
    assert not _ray_running()
    result = run("train", config_file, "algo.kl_coeff=1")
    assert result.exit_code == 2, result.output
    assert "algo.kl_coeff" in flat(result.output)
    assert "algo.kl_coef'" in flat(result.output)  # the suggestion
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not _ray_running()


@pytest.mark.usefixtures("no_ray_start")
@pytest.mark.parametrize(("overrides", "needle"), [
    (["rollout.n_samples=1"], "rollout.n_samples"),
    (["train.prompts_per_step=3", "learner.num_ranks=2", "rollout.n_samples=3"], "train.prompts_per_step"),
    (["model.path=/nonexistent/model"], "/nonexistent/model"),
    (["reward.rules={exact_matc: 1.0}"], "exact_matc"),
    (["resources.use_gpu=true"], "resources.use_gpu: true, but this machine has no CUDA GPU"),
])
def test_bad_runs_fail_before_any_actor_starts(overrides, needle, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = run("train", Path(__file__).resolve().parents[3] / "examples" / "tiny-grpo.yaml", *overrides)
    assert result.exit_code == 2, result.output
    assert needle in flat(result.output)
    assert not _ray_running()


@pytest.mark.usefixtures("no_ray_start")
def test_train_missing_config_file_exits_2(tmp_path):
    result = run("train", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "config file not found" in flat(result.output)


@pytest.mark.usefixtures("no_ray_start")
def test_train_cross_field_error_exits_2(config_file):
    result = run("train", config_file, "rollout.n_samples=1")
    assert result.exit_code == 2
    assert "rollout.n_samples" in flat(result.output)


# ----------------------------------------------------------------------------- config show


def test_config_show_prints_yaml_of_the_resolved_config(config_file):
    result = run("config", "show", config_file, "train.steps=9", "learner.lr=1e-5")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    expected = load_config(config_file, ["train.steps=9", "learner.lr=1e-5"])
    assert shown["train"]["steps"] == 9
    assert shown["algo"]["kl_coef"] == 0.1
    assert shown["learner"]["lr"] == 1e-5
    # The printed YAML is itself a config file that loads back to the same thing.
    path = config_file.with_name("shown.yaml")
    path.write_text(result.stdout)
    assert load_config(path) == expected


def test_config_show_defaults_and_overrides_only():
    result = run("config", "show")
    assert result.exit_code == 0, result.output
    assert set(yaml.safe_load(result.stdout)) == {f.name for f in Config.__dataclass_fields__.values()}
    result = run("config", "show", "algo.kl_coef=0.3")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["algo"]["kl_coef"] == 0.3


def test_config_show_docs():
    result = run("config", "show", "--docs")
    assert result.exit_code == 0, result.output
    assert "algo.kl_coef: KL penalty coefficient" in result.stdout
    assert "learner.deepspeed.zero_stage: ZeRO stage" in result.stdout


def test_config_show_bad_override_exits_2():
    result = run("config", "show", "train.steps=abc")
    assert result.exit_code == 2
    assert "train.steps: expected int" in flat(result.output)


# ----------------------------------------------------------------------------- data validate


@pytest.fixture
def prompts_jsonl(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"question": "What is 2 + 2?", "reference": "4"}, {"question": "Capital of France?"},
            {"reference": "no question here"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_validate_counts_and_quarantine(prompts_jsonl):
    result = run("data", "validate", prompts_jsonl, "--kind", "prompts")
    assert result.exit_code == 0, result.output
    table_row = [line for line in result.stdout.splitlines() if "│" in line][-1]
    assert [c.strip() for c in table_row.strip("│ ").split("│")] == ["3", "2", "1"]  # rows, valid, quarantined
    assert "question" in result.stdout  # the reason names the missing field
    quarantine = prompts_jsonl.with_name("prompts.prompts.quarantine.jsonl")
    assert quarantine.is_file()
    bad = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [q["row"] for q in bad] == [3]
    assert str(quarantine) in flat(result.stdout)


def test_data_validate_writes_clean_rows_to_out(prompts_jsonl, tmp_path):
    clean = tmp_path / "clean.jsonl"
    result = run("data", "validate", prompts_jsonl, "--kind", "prompts", "--out", clean)
    assert result.exit_code == 0, result.output
    assert len(clean.read_text().splitlines()) == 2
    assert (tmp_path / "clean.quarantine.jsonl").is_file()


def test_data_validate_unknown_kind(prompts_jsonl):
    result = run("data", "validate", prompts_jsonl, "--kind", "essays")
    assert result.exit_code != 0
    msg = flat(result.output)
    assert "unknown data kind 'essays'" in msg
    assert "prompts" in msg and "preferences" in msg  # lists the valid kinds


def test_data_validate_missing_file(tmp_path):
    result = run("data", "validate", tmp_path / "nope.jsonl", "--kind", "qa")
    assert result.exit_code == 2
    assert "does not exist" in flat(result.output)


# ----------------------------------------------------------------------------- models


def test_models_tiny_writes_a_model_folder(tmp_path):
    out_dir = tmp_path / "tiny"
    result = run("models", "tiny", out_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out_dir)
    names = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((out_dir / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # a head size vLLM's CPU attention takes
