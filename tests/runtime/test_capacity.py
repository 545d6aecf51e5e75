"""runtime/capacity.py: the actors' bundles against the nodes a config declares."""

from __future__ import annotations

import pytest

from gflowgr_dist.config import ConfigError, RuntimeConfig, load_config
from gflowgr_dist.runtime.capacity import role_bundles


def _runtime(**fields) -> RuntimeConfig:
    return RuntimeConfig.model_validate(fields)


def test_no_declared_nodes_means_no_check():
    rt = _runtime(num_rollout_actors=100, rollout_gpus=8.0)
    assert rt.nodes == {}


def test_bundles_list_every_actor_the_runtime_starts():
    rt = _runtime(num_rollout_actors=3, num_reward_actors=2, num_learners=3, rollout_gpus=0.5)
    roles = [b.role for b in role_bundles(rt)]
    assert roles == ["rollout"] * 3 + ["reward"] * 2 + ["learner"] * 2  # rank 0 is the driver
    assert role_bundles(rt)[0].demand == {"CPU": 0.25, "GPU": 0.5}


def test_exact_fit_passes_and_one_more_actor_fails():
    nodes = {"gpu": {"count": 2, "resources": {"CPU": 4, "GPU": 1}}}
    _runtime(num_rollout_actors=4, rollout_gpus=0.5, actor_cpus=1, nodes=nodes)
    with pytest.raises(ValueError, match=r"GPU=2.5 \(rollout 5 x 0.5\)"):
        _runtime(num_rollout_actors=5, rollout_gpus=0.5, actor_cpus=1, nodes=nodes)


def test_totals_that_fit_but_do_not_pack_onto_nodes_fail():
    # Nodes of 1 and 2 GPUs hold 3 GPUs in all, enough for two 1.5-GPU engines by the totals,
    # but only the 2-GPU node can take one: the second is left without a node.
    nodes = {
        "small": {"count": 1, "resources": {"CPU": 8, "GPU": 1}},
        "big": {"count": 1, "resources": {"CPU": 8, "GPU": 2}},
    }
    with pytest.raises(ValueError, match="do not pack onto its nodes"):
        _runtime(num_rollout_actors=2, rollout_gpus=1.5, nodes=nodes)


def test_actor_bigger_than_every_node_names_the_largest():
    nodes = {"a": {"count": 8, "resources": {"CPU": 4, "GPU": 1}}}
    with pytest.raises(ValueError, match="more than any node type"):
        _runtime(num_rollout_actors=1, rollout_gpus=2.0, nodes=nodes)


def test_custom_resource_no_node_declares_is_an_error():
    nodes = {"cpu": {"count": 4, "resources": {"CPU": 16}}}
    with pytest.raises(ValueError, match="rollout_node=1 .* declares rollout_node=0"):
        _runtime(rollout_resources={"rollout_node": 1}, nodes=nodes)


def test_bad_node_declaration_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"runtime.nodes.box: resources=\{'GPU': -1.0\}"):
        load_config(overrides=["runtime.nodes={box: {count: 1, resources: {GPU: -1}}}"])
    with pytest.raises(ConfigError, match=r"runtime.nodes.box.count = 0"):
        load_config(overrides=["runtime.nodes={box: {count: 0, resources: {CPU: 1}}}"])
