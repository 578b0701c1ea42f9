"""Registries are the only source of each choice: registering a variant is one decorated
function, and the config accepts it, refuses unknown names with the valid ones listed, and
documents them."""

from __future__ import annotations

import re

import pytest
import torch

from rlhf.config.checks import CHOICES, valid_values
from rlhf.config.tree import field_docs, load_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.registry import Registry, UnknownName
from rlhf.rl.advantages import ADVANTAGES, estimator
from rlhf.rl.rewards import RULES, combine

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test


def test_registry_registers_once_and_names_the_valid_entries():
    reg: Registry = Registry("widget")
    reg.register("a")(1)
    reg.register("b")(2)
    assert reg["b"] == 2 and reg.names() == ("a", "b") and "a" in reg and "c" not in reg and len(reg) == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    with pytest.raises(UnknownName, match="unknown widget 'c'; valid: a, b"):
        reg["c"]


@pytest.fixture
def new_estimator():
    @estimator("mean_baseline", min_group_size=3)
    def mean_baseline(x):
        adv = (x.seq_rewards - x.seq_rewards.mean()).unsqueeze(1) * x.mask
        return adv, adv

    yield mean_baseline
    del ADVANTAGES._entries["mean_baseline"]


def test_a_registered_estimator_is_a_valid_algo_name_at_once(new_estimator):
    assert load_config(None, ["algo.name=mean_baseline", "rollout.n_samples=4"]).algo.name == "mean_baseline"
    assert "mean_baseline" in field_docs()["algo.name"]
    # its registration carries what the config checks need
    with pytest.raises(ConfigError, match="mean_baseline compares samples within a group and needs at least 3"):
        load_config(None, ["algo.name=mean_baseline", "rollout.n_samples=2"])


def test_a_registered_reward_rule_is_valid_in_the_config_and_in_combine():
    @RULES.register("shouts")
    def shouts(response, reference, **_):
        return float(response.isupper())

    try:
        assert load_config(None, ["reward.rules={shouts: 2.0}"]).reward.rules == {"shouts": 2.0}
        assert combine("YES", None, {"shouts": 2.0}) == (2.0, {"reward/shouts": 1.0})
    finally:
        del RULES._entries["shouts"]
    with pytest.raises(ConfigError, match="reward.rules: unknown value 'shouts'"):
        load_config(None, ["reward.rules={shouts: 2.0}"])


@pytest.mark.parametrize("dotted", sorted(CHOICES))
def test_every_choice_field_refuses_an_unknown_value_listing_the_valid_ones(dotted):
    valid = valid_values(dotted)
    assert valid, dotted
    default = load_config(None, [])
    value = "no-such-choice"
    current = default
    for part in dotted.split("."):
        current = getattr(current, part)
    override = {str: value, list: f"[{value}]", dict: f"{{{value}: 1.0}}"}[type(current)]
    with pytest.raises(ConfigError, match=re.escape(f"{dotted}: unknown value '{value}'; valid: {', '.join(valid)}")):
        load_config(None, [f"{dotted}={override}"])
    assert f"Valid: {', '.join(valid)}." in field_docs()[dotted]


def test_registered_values_are_the_ones_the_code_runs():
    assert valid_values("algo.name") == ADVANTAGES.names()
    assert set(valid_values("reward.rules")) == set(RULES)
    x = torch.ones(2, 3)
    from rlhf.rl.kl import kl_estimate

    for name in valid_values("algo.kl_estimator"):
        assert kl_estimate(x, x, name).abs().max() == 0  # every estimator is 0 where p = q
