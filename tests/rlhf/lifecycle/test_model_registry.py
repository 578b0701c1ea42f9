"""The model registry: versions with lineage, gated promotion, rollback, through the CLI too."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from rlhf.lifecycle.registry import Registry, RegistryError

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def _model(path, tag: str):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    (path / "model.safetensors").write_bytes(tag.encode() * 10)
    return path


def test_versions_are_numbered_kept_apart_from_the_export_and_record_lineage(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.register(_model(tmp_path / "a", "a"), source="pipeline", data={"sft": "abc"})
    v2 = reg.register(_model(tmp_path / "b", "b"), source="round", parent="v1")
    assert [v["version"] for v in reg.versions()] == ["v1", "v2"]
    assert v1["status"] == v2["status"] == "candidate" and v2["parent"] == "v1" and v1["data"] == {"sft": "abc"}
    # The version's files survive the run folder being rewritten (hard links or copies, not the path).
    (tmp_path / "a" / "model.safetensors").unlink()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"rerun")
    assert (tmp_path / "reg" / "v1" / "model.safetensors").read_bytes() == b"a" * 10
    with pytest.raises(RegistryError, match="parent version 'v9'"):
        reg.register(_model(tmp_path / "c", "c"), source="manual", parent="v9")
    with pytest.raises(RegistryError, match="not a model folder"):
        reg.register(tmp_path, source="manual")
    with pytest.raises(RegistryError, match=r"no version 'v7' \(known: v1, v2\)"):
        reg.get("v7")


def test_promote_retires_the_live_one_and_rollback_restores_it(tmp_path):
    reg = Registry(tmp_path / "reg")
    for tag in "abc":
        reg.register(_model(tmp_path / tag, tag), source="manual")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    reg.promote("v1")
    reg.promote("v3")
    assert {v["version"]: v["status"] for v in reg.versions()} == {"v1": "retired", "v2": "candidate", "v3": "live"}
    with pytest.raises(RegistryError, match="already live"):
        reg.promote("v3")
    assert reg.rollback(note="thumbs down")["version"] == "v1"
    assert reg.live()["version"] == "v1" and reg.get("v3")["status"] == "retired"
    assert reg.get("v1")["events"][-1] == {"at": reg.get("v1")["events"][-1]["at"], "event": "rolled back to",
                                           "note": "thumbs down"}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()  # v1 was the first live version


def test_a_failed_gate_blocks_promotion_unless_forced_and_says_why(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.register(_model(tmp_path / "a", "a"), source="pipeline",
                 evaluation={"passed": True}, redteam={"passed": False, "why": "harmful attack success 12.5%"})
    with pytest.raises(RegistryError, match=r"red-team gate failed \(harmful attack success 12.5%\).*--force"):
        reg.promote("v1")
    assert reg.live() is None
    reg.promote("v1", force=True)
    assert reg.live()["events"][-1]["event"] == "promoted (forced)"


def test_a_damaged_registry_file_is_named(tmp_path):
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="registry.json: not valid JSON"):
        Registry(tmp_path).versions()


def test_models_commands(tmp_path):
    from rlhf.cli.main import app

    runner, reg = CliRunner(), ["--registry", str(tmp_path / "reg")]
    env = {"COLUMNS": "200"}
    added = runner.invoke(app, ["models", "register", str(_model(tmp_path / "a", "a")), *reg], env=env)
    assert added.exit_code == 0 and added.stdout.strip() == "v1", added.output
    runner.invoke(app, ["models", "register", str(_model(tmp_path / "b", "b")), *reg, "--parent", "v1"], env=env)
    assert runner.invoke(app, ["models", "promote", "v1", *reg], env=env).exit_code == 0
    assert runner.invoke(app, ["models", "promote", "v2", *reg], env=env).exit_code == 0
    listed = runner.invoke(app, ["models", "list", *reg], env=env)
    assert listed.exit_code == 0 and "v2" in listed.output and "live" in listed.output and "retired" in listed.output
    shown = runner.invoke(app, ["models", "show", "live", *reg], env=env)
    assert json.loads(shown.stdout)["version"] == "v2" and json.loads(shown.stdout)["parent"] == "v1"
    back = runner.invoke(app, ["models", "rollback", *reg], env=env)
    assert back.exit_code == 0 and "v1 is live" in back.output
    missing = runner.invoke(app, ["models", "promote", "v5", *reg], env=env)
    assert missing.exit_code == 2 and "no version 'v5'" in missing.output
    assert os.path.isdir(tmp_path / "reg" / "v2")


def test_a_promoted_round_goes_live_and_a_gated_one_stays_a_candidate_with_its_reason(tmp_path):
    from rlhf.lifecycle.lineage import register_round

    reg = Registry(tmp_path / "reg")
    base = {"metric": "accuracy", "value": 0.5, "data": {"preferences": {"rows": 40}}, "redteam": None}
    one = register_round(reg, {**base, "round": 1, "model": str(_model(tmp_path / "r1", "1")), "promoted": True,
                               "decision": "accuracy +0.10 vs round 0"})
    assert one["status"] == "live" and one["parent"] is None and one["source"] == "round 1"
    gate = {"passed": False, "failed": [{"check": "over-refusal", "value": 0.2, "limit": 0.1}]}
    two = register_round(reg, {**base, "round": 2, "model": str(_model(tmp_path / "r2", "2")), "promoted": False,
                               "decision": "not promoted: the red-team gate failed", "redteam": gate})
    assert two["status"] == "candidate" and two["parent"] == "v1" and reg.live()["version"] == "v1"
    with pytest.raises(RegistryError, match="evaluation failed.*red-team gate failed"):
        reg.promote("v2")
