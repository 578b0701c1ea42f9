"""Bundle layout, rank slots and GPU-setting checks: the GPU paths that need no GPU to test."""

from __future__ import annotations

import pytest

from rlhf.cluster.resources import Layout, actor_resources, check_fits, role_bundles
from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

GPU = ["resources.use_gpu=true"]


def layout(*overrides: str) -> Layout:
    return role_bundles(load_config(None, list(overrides)))


def shared_with(lay: Layout, role: str) -> set[str]:
    index = lay.slots[role][0]
    return {r for r, slots in lay.slots.items() if index in slots}


# ----------------------------------------------------------------------------- CPU (this machine)


def test_cpu_layout_asks_for_no_gpu():
    lay = layout()  # defaults: 1 engine, 2 learner ranks, reward + reference colocated
    assert lay.total("GPU") == 0
    assert all("GPU" not in b for b in lay.bundles)
    assert lay.total("CPU") == 4
    assert shared_with(lay, "reward") == {"reward", "reference"}
    # Rule rewards are plain Python: the reference gets the bundle's CPU (and so its threads).
    assert actor_resources(None, "reward", lay) == {}
    assert actor_resources(None, "reference", lay) == {"CPU": 1.0}
    assert actor_resources(None, "learner", lay) == {"CPU": 1.0}


def test_a_reward_model_shares_the_bundle_with_the_reference():
    lay = layout("reward.model_path=runs/rm", "resources.cpus_per_actor=2")
    assert lay.slots["reward"] == lay.slots["reference"]
    assert actor_resources(None, "reward", lay) == actor_resources(None, "reference", lay) == {"CPU": 1.0}
    assert lay.bundles[lay.slots["reward"][0]] == {"CPU": 2.0}


def test_the_rollout_engine_can_have_cpus_of_its_own():
    lay = layout("resources.cpus_per_rollout=2")
    assert actor_resources(None, "rollout", lay) == {"CPU": 2.0}
    assert actor_resources(None, "learner", lay) == {"CPU": 1.0}
    assert lay.total("CPU") == 5
    with pytest.raises(ValueError, match="resources.cpus_per_rollout"):
        layout("resources.cpus_per_rollout=-1")


def test_no_reference_without_kl():
    lay = layout("algo.kl_coef=0")
    assert "reference" not in lay.slots
    assert lay.bundles[lay.slots["reward"][0]] == {"CPU": 1.0}


def test_not_colocated_gives_every_actor_its_own_bundle():
    lay = layout("resources.colocate=false")
    indices = [i for slots in lay.slots.values() for i in slots]
    assert len(indices) == len(set(indices)) == len(lay.bundles) == 5


# ----------------------------------------------------------------------------- GPU bundles


def test_gpu_bundle_per_role():
    lay = layout(*GPU, "rollout.num_engines=2", "learner.num_ranks=4")
    assert [lay.bundles[i] for i in lay.slots["rollout"]] == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert [lay.bundles[i] for i in lay.slots["learner"]] == [{"CPU": 1.0, "GPU": 1.0}] * 4
    # Reward and reference default to 0 GPUs: they share a CPU bundle.
    assert lay.bundles[lay.slots["reward"][0]] == {"CPU": 1.0}
    assert lay.total("GPU") == 6
    assert lay.describe("GPU") == "rollout 2, learner 4"


def test_tensor_parallel_size_multiplies_rollout_gpus():
    lay = layout(*GPU, "rollout.num_engines=2", "rollout.tensor_parallel_size=4")
    assert [lay.bundles[i]["GPU"] for i in lay.slots["rollout"]] == [4.0, 4.0]
    assert actor_resources(None, "rollout", lay)["GPU"] == 4.0
    assert lay.total("GPU") == 8 + 2


def test_fractional_rollout_gpu():
    lay = layout(*GPU, "resources.gpus_per_rollout=0.5")
    assert lay.bundles[lay.slots["rollout"][0]]["GPU"] == 0.5


def test_colocation_shares_a_learner_gpu_with_fractions():
    lay = layout(*GPU, "resources.gpus_per_learner=0.5", "resources.gpus_per_reward=0.25",
                 "resources.gpus_per_reference=0.25", "reward.model_path=runs/rm")
    index = lay.slots["learner"][0]
    assert shared_with(lay, "learner") == {"learner", "reward", "reference"}
    assert lay.slots["reward"] == lay.slots["reference"] == [index]
    assert lay.bundles[index] == {"CPU": 2.0, "GPU": 1.0}
    asks = [actor_resources(None, r, lay) for r in ("learner", "reward", "reference")]
    assert [a["GPU"] for a in asks] == [0.5, 0.25, 0.25]
    # What the sharers ask for adds up to the bundle, so Ray can place all three in it.
    assert sum(a["GPU"] for a in asks) == lay.bundles[index]["GPU"]
    assert sum(a["CPU"] for a in asks) == lay.bundles[index]["CPU"]
    assert lay.total("GPU") == 1 + 0.5 * 2 + 0.5


def test_colocation_falls_back_to_its_own_bundle_when_the_learner_gpu_is_full():
    lay = layout(*GPU, "resources.gpus_per_reward=0.5", "resources.gpus_per_reference=0.5",
                 "reward.model_path=runs/rm")
    index = lay.slots["reward"][0]
    assert index not in lay.slots["learner"]
    assert lay.slots["reference"] == [index]
    assert lay.bundles[index] == {"CPU": 1.0, "GPU": 1.0}
    assert actor_resources(None, "reference", lay) == {"CPU": 0.5, "GPU": 0.5}


def test_learner_ranks_get_bundles_in_rank_order():
    lay = layout(*GPU, "rollout.num_engines=2", "learner.num_ranks=4", "train.prompts_per_step=8")
    ranks = lay.slots["learner"]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    assert ranks == list(range(ranks[0], ranks[0] + 4))  # contiguous: PACK keeps them together
    assert lay.slots["rollout"] == [0, 1]  # engines come first


# ----------------------------------------------------------------------------- GPU settings


@pytest.mark.parametrize("overrides, field", [
    (GPU + ["rollout.tensor_parallel_size=2", "resources.gpus_per_rollout=0.5"], "resources.gpus_per_rollout"),
    (GPU + ["resources.gpus_per_learner=2"], "resources.gpus_per_learner"),
    (GPU + ["resources.gpus_per_learner=0"], "resources.gpus_per_learner"),
    (GPU + ["resources.gpus_per_rollout=0"], "resources.gpus_per_rollout"),
    (GPU + ["resources.gpus_per_reward=-0.5"], "resources.gpus_per_reward"),
    (["rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size"),
    (["rollout.weight_sync=nccl"], "rollout.weight_sync"),
    (["rollout.weight_sync=ipc"], "rollout.weight_sync"),
    (["learner.backend=nccl"], "learner.backend"),
    (["resources.cpus_per_actor=0"], "resources.cpus_per_actor"),
])
def test_gpu_settings_that_cannot_work_name_their_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        layout(*overrides)


def test_shared_bundle_of_fractional_gpus_over_one_is_refused():
    with pytest.raises(ConfigError, match="reward \\+ reference.*1.4 GPUs"):
        layout(*GPU, "resources.gpus_per_reward=0.7", "resources.gpus_per_reference=0.7")
    lay = layout(*GPU, "resources.gpus_per_reward=0.7", "resources.gpus_per_reference=0.7", "resources.colocate=false")
    assert lay.total("GPU") == 3 + 1.4


def test_nccl_learner_backend_is_accepted_on_gpus_only():
    layout(*GPU, "learner.backend=nccl")
    with pytest.raises(ConfigError, match="learner.backend: nccl needs GPUs"):
        load_config(None, ["learner.backend=nccl"])


@pytest.mark.parametrize("transport", ["nccl", "ipc"])
def test_gpu_weight_sync_is_refused_on_cpu_when_the_config_loads(transport):
    # Refused at load, before any actor starts: on CPU vLLM's NCCL path would leave stale engines.
    with pytest.raises(ConfigError, match=f"rollout.weight_sync: {transport} moves weights GPU to GPU.*"
                                          "resources.use_gpu: true.*use auto, shm"):
        load_config(None, [f"rollout.weight_sync={transport}"])


def test_nccl_weight_sync_is_accepted_on_gpus_for_full_weights_only():
    assert load_config(None, [*GPU, "rollout.weight_sync=nccl"]).rollout.weight_sync == "nccl"
    with pytest.raises(ConfigError, match="nccl streams full weights; with model.lora.enabled only the adapter"):
        load_config(None, [*GPU, "rollout.weight_sync=nccl", "model.lora.enabled=true"])
    # ipc maps the learner's own GPU memory; the layout never puts an engine on a learner's GPU.
    with pytest.raises(ConfigError, match="ipc needs the rollout engines on the learner's own GPUs"):
        load_config(None, [*GPU, "rollout.weight_sync=ipc"])


# ----------------------------------------------------------------------------- fitting a cluster


def test_check_fits_names_the_shortfall_and_the_roles():
    lay = layout(*GPU, "learner.num_ranks=4")
    check_fits(lay, {"CPU": 16, "GPU": 5})
    with pytest.raises(ConfigError, match=r"needs 5 GPU \(rollout 1, learner 4\) but the Ray cluster has 4"):
        check_fits(lay, {"CPU": 16, "GPU": 4})
    with pytest.raises(ConfigError, match="needs 6 CPU"):
        check_fits(lay, {"CPU": 2, "GPU": 8})


def test_check_fits_knows_a_bundle_cannot_span_nodes():
    lay = layout(*GPU, "rollout.tensor_parallel_size=8")
    four_gpu_nodes = [{"CPU": 48, "GPU": 4}] * 4
    message = "rollout bundle needs 1 CPU, 8 GPU on a single node.*most GPUs on one node: 4"
    with pytest.raises(ConfigError, match=message):
        check_fits(lay, {"CPU": 192, "GPU": 16}, four_gpu_nodes)
    check_fits(lay, {"CPU": 96, "GPU": 16}, [{"CPU": 48, "GPU": 8}] * 2)


def test_with_lora_the_reference_is_the_engines_base_weights_and_has_no_bundle():
    from rlhf.cluster.resources import reference_role

    assert reference_role(load_config(None, [])) == "actor"
    lora = load_config(None, ["model.lora.enabled=true"])
    assert reference_role(lora) == "engine" and "reference" not in role_bundles(lora).slots
    # Another reference model needs its own copy; no KL needs none.
    assert reference_role(load_config(None, ["model.lora.enabled=true", "reference.path=/models/other"])) == "actor"
    assert reference_role(load_config(None, ["model.lora.enabled=true", "algo.kl_coef=0"])) is None


def test_role_resources_pin_a_role_to_the_nodes_that_advertise_them():
    lay = layout("resources.role_resources.rollout.gen_node=1", "resources.role_resources.learner.train_node=0.5")
    assert [lay.bundles[i] for i in lay.slots["rollout"]] == [{"CPU": 1.0, "gen_node": 1.0}]
    assert [lay.bundles[i] for i in lay.slots["learner"]] == [{"CPU": 1.0, "train_node": 0.5}] * 2
    assert "gen_node" not in lay.bundles[lay.slots["reference"][0]]
    check_fits(lay, {"CPU": 8, "gen_node": 1, "train_node": 4})
    with pytest.raises(ConfigError, match=r"needs 1 train_node \(learner 1\) but the Ray cluster has 0.*"
                                          r"ray start --resources"):
        check_fits(lay, {"CPU": 8, "gen_node": 1})
    with pytest.raises(ConfigError, match="no node of the cluster has that much"):
        check_fits(lay, {"CPU": 8, "gen_node": 1, "train_node": 1},
                   nodes=[{"CPU": 4, "gen_node": 1}, {"CPU": 4}])


@pytest.mark.parametrize(("override", "message"), [
    ("resources.role_resources.critic.x=1", "resources.role_resources.critic: unknown role; expected one of rollout"),
    ("resources.role_resources.learner.CPU=2", "resources.role_resources.learner.CPU: set CPUs and GPUs"),
    ("resources.role_resources.rollout.x=0", "resources.role_resources.rollout.x: must be more than 0"),
])
def test_bad_role_resources_name_their_field(override, message):
    with pytest.raises(ConfigError, match=message):
        layout(override)
