"""A distributed run on several Ray nodes of one machine (`ray.cluster_utils.Cluster`), driven by
tests/runtime/test_multinode.py in a subprocess (a process can join one Ray cluster only, and the
test session already has one).

Nodes: a head (the driver and learner), two `rollout_node` workers and one `reward_node` worker;
custom resources stand in for GPUs. The config pins rollout actors to `rollout_node` and reward
actors to `reward_node`. After the second learner step the worker holding rollout-0 is removed;
Ray restarts the actor on the other rollout node, the driver re-syncs it and re-issues its work.
Prints one JSON line: where each actor ran before and after, and the run's accounting.

    python tests/runtime/multinode_run.py OUT_DIR [placement]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import ray
import torch
from ray.cluster_utils import Cluster

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig, SyntheticConfig, load_config
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.runtime.driver import run_distributed
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.train.gflowgr import GflowgrTrainer
from gflowgr_dist.train.sft import length_bucketed_batches


def main(out: Path, placement: str) -> dict:
    torch.set_num_threads(1)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"learner_node": 1}},
    )
    workers = {
        "rollout-a": cluster.add_node(num_cpus=1, resources={"rollout_node": 1}),
        "rollout-b": cluster.add_node(num_cpus=1, resources={"rollout_node": 1}),
        "reward": cluster.add_node(num_cpus=1, resources={"reward_node": 1}),
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    name_of = {node.node_id: name for name, node in workers.items()}
    name_of[cluster.head_node.node_id] = "head"
    try:
        return _run(out, placement, cluster, workers, name_of)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(out, placement, cluster, workers, name_of) -> dict:
    cfg = load_config(
        overrides=[
            f"run.output_dir={out}", "data.max_history=8", "model.preset=tiny",
            "train.batch_size=16", "train.epochs=1", "train.num_threads=1",
            "train.max_eval_users=8", "eval.beam_width=10", "eval.ks=[5, 10]",
            "gfn.calibration_users=8", "gfn.sampler.num_augmented=3",
            "gfn.sampler.weights_start={random: 0.5, on_policy: 0.5}",
            "gfn.sampler.weights_end={random: 0.5, on_policy: 0.5}",
            "gfn.reward.score=none", "logging.progress=false",
            f"runtime.placement={placement}", "runtime.actor_cpus=0.25",
            "runtime.rollout_resources={rollout_node: 0.5}",
            "runtime.reward_resources={reward_node: 0.5}", "runtime.sync_timeout_s=120",
        ]
    )  # fmt: skip
    dataset = load_synthetic(SyntheticConfig(num_users=60, num_items=40, num_clusters=4), 0)
    table, _ = build_semantic_ids(
        dataset, SemanticIdConfig(codebook_sizes=[4, 4]), EmbeddingConfig(encoder="hashing"), seed=0
    )
    splits = leave_one_out(dataset, 8)
    trainer = GflowgrTrainer(cfg, dataset, splits, table, out)
    seen: dict[str, dict[str, str]] = {}

    def on_step(run, step: int) -> None:
        if step == 2 and "before" not in seen:
            seen["before"] = {a: name_of[n] for a, n in run.nodes(timeout_s=300).items()}
            doomed = seen["before"]["rollout-0"]
            cluster.remove_node(workers[doomed])

    result = run_distributed(cfg, out, trainer=trainer, on_step=on_step)
    seen["after"] = {a: name_of.get(n, n) for a, n in result.nodes.items()}
    rng = np.random.default_rng([cfg.run.seed, 0])
    batches = length_bucketed_batches(trainer.lengths, cfg.train.batch_size, rng)
    expected = sorted(int(i) for b in batches for i in b)
    return {
        "placement": placement,
        "before": seen["before"],
        "after": seen["after"],
        "restarts": result.restarts,
        "steps": len([x for x in result.losses if x is not None]),
        "consumed_once": sorted(result.consumed_ids[0]) == expected,
        "finite": bool(all(np.isfinite(x) for x in result.losses if x is not None)),
    }


if __name__ == "__main__":
    summary = main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "resources")
    print("MULTINODE " + json.dumps(summary))
