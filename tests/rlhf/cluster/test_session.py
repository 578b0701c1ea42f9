"""One local Ray shared by a pipeline's stages: started lazily, sized for the largest, stopped at the end."""

from __future__ import annotations

import pytest

from rlhf.config.tree import load_config


def test_local_cpus_is_the_largest_ray_stage():
    from rlhf.cluster.resources import local_cpus, role_bundles

    cfg = load_config(None, ["learner.num_ranks=2", "sft.num_workers=4"])
    assert local_cpus(cfg) == 5  # four SFT workers and Ray Train's controller
    small = load_config(None, ["learner.num_ranks=2"])
    assert local_cpus(small) == round(role_bundles(small).total("CPU"))
    assert local_cpus(load_config(None, ["resources.num_cpus=7"])) == 7


@pytest.mark.slow
def test_stages_inside_a_shared_session_keep_one_ray_and_it_stops_at_the_end():
    import ray

    from rlhf.cluster.session import shared_session, start_local

    assert not ray.is_initialized()
    with shared_session(3):
        assert not ray.is_initialized()  # lazily: nothing started before a stage asks
        assert start_local(1) is False  # the first stage starts it, but the session owns it
        node = ray.get_runtime_context().get_node_id()
        assert ray.cluster_resources()["CPU"] == 3  # sized for the largest stage, not the first
        assert start_local(2) is False and ray.get_runtime_context().get_node_id() == node
    assert not ray.is_initialized()
    assert start_local(1) is True  # outside a session the stage owns its Ray
    ray.shutdown()
