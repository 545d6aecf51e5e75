"""Learner -> rollout weight sync over the object store (the CPU path).

Per sync the learner's state dict is put in the object store once and each rollout actor gets
one control call, `load_weights(ref, version)`, never one call per parameter. Ray runs an
actor's calls in submission order, so a `generate` submitted after the sync always sees the new
weights: the driver need not block on the sync, and a busy actor finishes its current batch
first. Every wait has a deadline, and a timeout or a dead actor raises `WeightSyncError` naming
the actor and the phase.

`VllmEngine.load_weights` takes the same state dict through `collective_rpc`. The GPU route,
vLLM's NCCL weight transfer, is `runtime/weight_transfer_gpu.py` (`runtime.weight_sync: nccl`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from gflowgr_dist.runtime.messages import SyncAck


class WeightSyncError(RuntimeError):
    """A sync phase failed or timed out for a named actor."""


@dataclass
class SyncTicket:
    """One sync in flight: the object ref of the weights and one call per actor.

    `pending` maps an actor's name to (handle, object ref of its `load_weights` call).
    """

    version: int
    state_ref: Any
    started: float
    put_seconds: float
    pending: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    acks: dict[str, SyncAck] = field(default_factory=dict)

    def wait(self, timeout_s: float) -> dict[str, SyncAck]:
        """Blocks until every actor has loaded this version; raises on timeout or death."""
        import ray

        deadline = time.monotonic() + timeout_s
        for name, (_, ref) in list(self.pending.items()):
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([ref], timeout=left)
            if not ready:
                raise WeightSyncError(
                    f"weight sync v{self.version}: actor {name} did not finish phase "
                    f"'load_weights' within {timeout_s:.1f}s (hung, or stuck in a long call)"
                )
            self.acks[name] = resolve_ack(name, ref, self.version)
            del self.pending[name]
        return self.acks

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def resolve_ack(name: str, ref: Any, version: int) -> SyncAck:
    """The ack behind a finished `load_weights` ref; a dead actor becomes `WeightSyncError`."""
    import ray

    try:
        ack = ray.get(ref)
    except ray.exceptions.RayActorError as err:
        raise WeightSyncError(
            f"weight sync v{version}: actor {name} died in phase 'load_weights': {err}"
        ) from err
    if ack.version != version:
        raise WeightSyncError(
            f"weight sync v{version}: actor {name} acknowledged version {ack.version}"
        )
    return ack


def push_weights(
    actors: dict[str, Any], state: dict[str, Tensor], version: int, *, state_ref: Any = None
) -> SyncTicket:
    """Puts `state` once (unless `state_ref` is given) and sends one call per actor."""
    import ray

    started = time.perf_counter()
    if state_ref is None:
        state_ref = ray.put({k: v.detach() for k, v in state.items()})
    put_seconds = time.perf_counter() - started
    ticket = SyncTicket(version, state_ref, started, put_seconds)
    for name, handle in actors.items():
        ticket.pending[name] = (handle, handle.load_weights.remote(state_ref, version))
    return ticket
