"""The config tree: defaults, YAML, dotted overrides, and errors that name the field."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rlhf.config.tree import Config, dump_config, field_docs, load_config, native_bf16
from rlhf.config.typed_yaml import ConfigError, get_dotted, parse_overrides, to_dict

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def write(path, text):
    path.write_text(text)
    return path


def leaf_fields(cls=Config, prefix=""):
    """Every dotted leaf field name of the tree, walked from the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names += leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names


# ----------------------------------------------------------------------------- loading


def test_defaults_load_and_validate():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.algo.name == "grpo"
    assert cfg.learner.deepspeed.zero_stage == 3
    assert cfg.reward.rules == {"exact_match": 1.0}


def test_yaml_file_sets_fields_and_keeps_other_defaults(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        "model:\n  path: tiny\n  lora: {enabled: true, r: 4}\n"
        "algo:\n  name: rloo\n  kl_coef: 0.1\n"
        "learner:\n  lr: 3e-4\n  deepspeed: {zero_stage: 2}\n"
        "reward:\n  rules: {numeric: 1.0, length: 0.1}\n",
    )
    cfg = load_config(path)
    assert cfg.model.path == "tiny"
    assert cfg.model.lora.enabled is True and cfg.model.lora.r == 4
    assert cfg.model.lora.alpha == 16  # untouched sibling keeps its default
    assert cfg.algo.name == "rloo" and cfg.algo.kl_coef == 0.1
    assert cfg.learner.lr == pytest.approx(3e-4)  # `3e-4` without a dot is still a float
    assert cfg.learner.deepspeed.zero_stage == 2
    assert cfg.learner.deepspeed.gradient_clipping == 1.0
    assert cfg.reward.rules == {"numeric": 1.0, "length": 0.1}
    assert cfg.train == Config().train


def test_empty_yaml_file_is_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_examples_load():
    from pathlib import Path

    examples = sorted(p for p in (Path(__file__).resolve().parents[3] / "examples").glob("*.yaml")
                      if not p.name.endswith("-space.yaml"))  # search spaces are not configs
    assert examples
    for path in examples:
        load_config(path)


# ----------------------------------------------------------------------------- overrides


def test_dotted_overrides(tmp_path):
    cfg = load_config(overrides=["algo.kl_coef=0.05", "train.steps=10", f"model.path={tmp_path}"])
    assert cfg.algo.kl_coef == 0.05
    assert cfg.train.steps == 10
    assert cfg.model.path == str(tmp_path)


def test_nested_override():
    cfg = load_config(overrides=["learner.deepspeed.zero_stage=2", "model.lora.target_modules=[q_proj]"])
    assert cfg.learner.deepspeed.zero_stage == 2
    assert cfg.model.lora.target_modules == ["q_proj"]


def test_dict_and_list_overrides():
    cfg = load_config(overrides=["reward.rules={exact_match: 1.0, length: 0.5}", "learner.adam_betas=[0.8, 0.99]"])
    assert cfg.reward.rules == {"exact_match": 1.0, "length": 0.5}
    assert cfg.learner.adam_betas == [0.8, 0.99]


def test_override_replaces_a_mapping_value_rather_than_merging_into_it():
    # reward.rules is a field (a dict value), not a section: the override is the whole new dict.
    cfg = load_config(overrides=["reward.rules={numeric: 2}"])
    assert cfg.reward.rules == {"numeric": 2.0}


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", "train:\n  steps: 5\n  name: fromfile\n")
    cfg = load_config(path, ["train.steps=7"])
    assert cfg.train.steps == 7
    assert cfg.train.name == "fromfile"


def test_override_values_read_as_yaml_1_2_scalars():
    cfg = load_config(overrides=["learner.lr=1e-5", "learner.critic_lr=2E-4", "model.system_prompt=no",
                                 "train.name=2024-01-01", "train.export=false"])
    assert cfg.learner.lr == 1e-5 and isinstance(cfg.learner.lr, float)
    assert cfg.learner.critic_lr == 2e-4
    assert cfg.model.system_prompt == "no"  # not YAML 1.1's boolean False
    assert cfg.train.name == "2024-01-01"  # not a date
    assert cfg.train.export is False


def test_empty_override_value_is_an_empty_string():
    assert load_config(overrides=["model.system_prompt="]).model.system_prompt == ""


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match=r"override 'train\.steps' must look like section\.field=value"):
        parse_overrides(["train.steps"])


def test_override_into_a_field_that_is_not_a_section():
    with pytest.raises(ConfigError, match=r"algo\.kl_coef"):
        load_config(overrides=["algo.kl_coef.x=1"])


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match=r"train: expected a mapping of TrainConfig fields"):
        load_config(overrides=["train=3"])


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_field_names_key_and_closest_valid_one():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["algo.kl_coeff=0.1"])
    msg = str(err.value)
    assert "'algo.kl_coeff'" in msg
    assert "did you mean 'algo.kl_coef'" in msg


def test_unknown_section_suggests_closest_section():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["trian.steps=3"])
    assert "'trian'" in str(err.value)
    assert "did you mean 'train'" in str(err.value)


def test_unknown_nested_key_in_yaml_file(tmp_path):
    path = write(tmp_path / "run.yaml", "learner:\n  deepspeed:\n    zero_stag: 2\n")
    suggestion = r"learner\.deepspeed\.zero_stag.*did you mean 'learner\.deepspeed\.zero_stage'"
    with pytest.raises(ConfigError, match=suggestion):
        load_config(path)


def test_unknown_key_with_nothing_close_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["tune.zzzzzz=1"])
    msg = str(err.value)
    assert "'tune.zzzzzz'" in msg and "did you mean" not in msg
    assert "valid: stage, metric, mode" in msg


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.steps=abc", r"train\.steps: expected int, got str 'abc'"),
        ("train.steps=1.5", r"train\.steps: expected int, got float 1\.5"),
        ("train.steps=true", r"train\.steps: expected int, got bool True"),
        ("train.export=1", r"train\.export: expected bool, got int 1"),
        ("algo.kl_coef=high", r"algo\.kl_coef: expected float, got str 'high'"),
        ("learner.adam_betas=0.9", r"learner\.adam_betas: expected a list of float"),
        ("learner.adam_betas=[0.9, x]", r"learner\.adam_betas\[1\]: expected float"),
        ("reward.rules=[exact_match]", r"reward\.rules: expected a mapping"),
        ("reward.rules={exact_match: lots}", r"reward\.rules\.exact_match: expected float"),
        ("model.path=null", r"model\.path: expected str"),
    ],
)
def test_wrong_type_names_field_and_expected_type(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides=[override])


def test_int_widens_to_float_but_nothing_else_converts():
    cfg = load_config(overrides=["algo.kl_coef=1", "reward.rules={exact_match: 2}"])
    assert cfg.algo.kl_coef == 1.0 and type(cfg.algo.kl_coef) is float
    assert type(cfg.reward.rules["exact_match"]) is float


def test_numbers_are_accepted_for_string_fields():
    assert load_config(overrides=["train.name=42"]).train.name == "42"


# ----------------------------------------------------------------------------- cross-field checks


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_algos_need_two_samples(algo):
    with pytest.raises(ConfigError, match=rf"rollout\.n_samples: {algo} compares samples"):
        load_config(overrides=[f"algo.name={algo}", "rollout.n_samples=1"])


def test_ppo_allows_one_sample():
    assert load_config(overrides=["algo.name=ppo", "rollout.n_samples=1"]).rollout.n_samples == 1


def test_batch_must_divide_across_ranks():
    # 1 prompt x 4 samples = 4 sequences over 3 ranks.
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.prompts_per_step=1", "learner.num_ranks=3"])
    msg = str(err.value)
    assert msg.startswith("train.prompts_per_step:")
    assert "learner.num_ranks=3" in msg


def test_batch_must_divide_across_mini_batches():
    with pytest.raises(ConfigError, match=r"train\.prompts_per_step:.*learner\.mini_batches=3"):
        load_config(overrides=["learner.num_ranks=1", "learner.mini_batches=3"])


def test_unknown_algo():
    with pytest.raises(ConfigError, match=r"algo\.name: unknown value 'ppo2'; valid: ppo, grpo, rloo, reinforce_pp"):
        load_config(overrides=["algo.name=ppo2"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.path=", "model.path"),
        ("model.path=' '", "model.path"),
        ("algo.kl_estimator=k4", "algo.kl_estimator"),
        ("model.dtype=float16", "model.dtype"),
        ("rollout.weight_sync=carrier_pigeon", "rollout.weight_sync"),
        ("learner.deepspeed.zero_stage=4", "learner.deepspeed.zero_stage"),
        ("train.steps=0", "train.steps"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("data.kind=essays", "data.kind"),
        ("tune.mode=best", "tune.mode"),
        ("tune.scheduler=hyperband", "tune.scheduler"),
    ],
)
def test_value_checks_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize("overrides, message", [
    (["model.lora.r=0"], r"model\.lora\.r: must be 1-512"),
    (["model.lora.r=1024"], r"model\.lora\.r: must be 1-512"),
    (["model.lora.target_modules=[]"], r"model\.lora\.target_modules: is empty"),
    (["model.lora.target_modules=[q_proj, lm_head]"], r"model\.lora\.target_modules: lm_head cannot carry"),
])
def test_lora_settings_the_rollout_engine_cannot_serve_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["model.lora.enabled=true", *overrides])
    load_config(overrides=overrides)  # only checked when LoRA is on


# ----------------------------------------------------------------------------- files


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(missing)
    assert str(missing) in str(err.value)


def test_non_mapping_yaml(tmp_path):
    path = write(tmp_path / "list.yaml", "- train\n- algo\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


def test_invalid_yaml(tmp_path):
    path = write(tmp_path / "bad.yaml", "train: {steps: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(overrides=[
        "algo.name=rloo", "learner.lr=1e-5", "model.lora.enabled=true", "reward.rules={numeric: 1, length: 0.25}",
        "serve.api_keys=[k1, k2]", "data.fields={query: question}",
        # Strings that YAML could read as other types must survive the trip as strings.
        "model.system_prompt='yes'", "train.name='1e-3'", "model.path='null'",
    ])
    assert cfg.model.system_prompt == "yes" and cfg.train.name == "1e-3" and cfg.model.path == "null"
    path = tmp_path / "dumped.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


def test_default_round_trip(tmp_path):
    dump_config(Config(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == Config()


# ----------------------------------------------------------------------------- docs


def test_every_leaf_field_has_a_docstring():
    docs = field_docs()
    leaves = leaf_fields()
    assert sorted(docs) == sorted(leaves)
    missing = [name for name in leaves if not docs[name].strip()]
    assert missing == [], f"fields without a docstring: {missing}"


def test_field_docs_are_the_text_under_each_field():
    docs = field_docs()
    assert docs["algo.kl_coef"] == "KL penalty coefficient (initial value when adaptive)."
    # Multi-line docstrings are joined into one line.
    assert "\n" not in docs["model.path"] and "hub id" in docs["model.path"]


def test_get_dotted():
    cfg = load_config(overrides=["learner.deepspeed.zero_stage=1"])
    assert get_dotted(cfg, "learner.deepspeed.zero_stage") == 1
    assert get_dotted(cfg, "algo") == cfg.algo


def test_auto_dtype_takes_bf16_only_where_the_hardware_multiplies_it(tmp_path, monkeypatch):
    from rlhf.config import tree

    avx2, bf16 = tmp_path / "avx2", tmp_path / "bf16"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    bf16.write_text("flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16\n")
    assert not native_bf16(str(avx2)) and native_bf16(str(bf16))
    assert not native_bf16(str(tmp_path / "missing"))
    monkeypatch.setattr(tree, "native_bf16", lambda: False)
    assert load_config(None, ["model.dtype=auto"]).model.dtype == "float32"
    assert load_config(None, ["model.dtype=auto", "resources.use_gpu=true"]).model.dtype == "bfloat16"
    monkeypatch.setattr(tree, "native_bf16", lambda: True)
    assert load_config(None, ["model.dtype=auto"]).model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(None, ["model.dtype=fp8"])
    # The answering engines' dtype: empty follows model.dtype, auto is settled like model.dtype's.
    assert load_config(None, ["model.dtype=float32"]).model.inference_dtype == ""
    assert load_config(None, ["model.dtype=float32", "model.inference_dtype=auto"]).model.inference_dtype == "bfloat16"
    monkeypatch.setattr(tree, "native_bf16", lambda: False)
    assert load_config(None, ["model.inference_dtype=auto"]).model.inference_dtype == "float32"
    assert load_config(None, ["model.inference_dtype=bfloat16"]).model.inference_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="model.inference_dtype"):
        load_config(None, ["model.inference_dtype=half"])


def test_learner_precision_and_attention_follow_the_config():
    from rlhf.models.runtime import attention_impl, learner_bf16

    cfg = load_config()
    assert not learner_bf16(cfg) and attention_impl(cfg) == "eager"  # fp32, 256 + 64 tokens
    assert learner_bf16(load_config(overrides=["model.dtype=bfloat16"]))
    assert not learner_bf16(load_config(overrides=["model.dtype=bfloat16", "learner.deepspeed.bf16=false"]))
    assert attention_impl(load_config(overrides=["model.max_prompt_tokens=1024"])) == "sdpa"
    assert attention_impl(load_config(overrides=["resources.use_gpu=true"])) == "sdpa"
    assert attention_impl(load_config(overrides=["model.attention=sdpa"])) == "sdpa"
    with pytest.raises(ConfigError, match="model.attention"):
        load_config(overrides=["model.attention=flash"])


@pytest.mark.parametrize("override, expected", [
    ("algo.clip_eps=0", r"algo\.clip_eps: must be in \(0, 1\), got 0"),
    ("algo.clip_eps_high=-0.1", r"algo\.clip_eps_high: must be 0 \(same as clip_eps\) or more"),
    ("algo.tis_cap=0.5", r"algo\.tis_cap: must be 0 \(off\) or at least 1, got 0.5"),
    ("algo.loss_agg=sum", r"algo\.loss_agg: unknown value 'sum'; valid: token_mean, seq_mean_token_mean"),
    ("algo.max_draws=0", r"algo\.max_draws: must be at least 1, got 0"),
])
def test_rl_recipe_settings_are_checked(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(overrides=[override])
    assert load_config(overrides=["algo.clip_eps_high=0.28", "algo.tis_cap=2", "algo.loss_agg=token_mean"])


def test_dynamic_sampling_needs_groups_to_compare():
    with pytest.raises(ConfigError, match=r"algo\.dynamic_sampling: .*rollout\.n_samples must be 2 or more, got 1"):
        load_config(overrides=["algo.dynamic_sampling=true", "rollout.n_samples=1", "algo.name=reinforce_pp"])
    assert load_config(overrides=["algo.dynamic_sampling=true", "rollout.n_samples=4"]).algo.max_draws == 3
