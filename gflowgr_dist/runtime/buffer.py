"""The trajectory buffer between reward actors and the learner.

Bounded, FIFO, one entry per `ScoredBatch` (a batch of trajectories, never one trajectory: a
queue entry per trajectory is ~60x slower here). Admission is version-aware: a batch sampled by
policy version v is admitted while the learner is at version u <= v + S and dropped (counted,
handed back to the driver for re-issue) once u > v + S, at `put` and again at `take`, since it
may go stale while waiting. S = 0 is fully synchronous.

`TrajectoryBuffer` is plain Python; `BufferActor` is the same class as a Ray actor, so the
admission rules are unit-tested without Ray.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict

from gflowgr_dist.runtime.messages import BufferCounters, BufferTake, ScoredBatch


class TrajectoryBuffer:
    """See the module docstring."""

    def __init__(self, capacity: int, max_staleness: int) -> None:
        if capacity < 1 or max_staleness < 0:
            raise ValueError(f"capacity={capacity} must be >= 1, max_staleness >= 0")
        self.capacity = capacity
        self.max_staleness = max_staleness
        self.entries: deque[ScoredBatch] = deque()
        self.counters = BufferCounters()

    def fresh(self, scored: ScoredBatch, learner_version: int) -> bool:
        return scored.policy_version >= learner_version - self.max_staleness

    def put(self, scored: ScoredBatch, learner_version: int) -> str:
        """'admitted', 'dropped' (stale: the caller re-issues its work) or 'full' (retry)."""
        if not self.fresh(scored, learner_version):
            self.counters.dropped += 1
            return "dropped"
        if len(self.entries) >= self.capacity:
            self.counters.refused_full += 1
            return "full"
        self.entries.append(scored)
        self.counters.admitted += 1
        return "admitted"

    def take(self, learner_version: int) -> BufferTake:
        """The oldest fresh batch (or None), dropping every stale one in front of it."""
        dropped = []
        while self.entries:
            scored = self.entries.popleft()
            if self.fresh(scored, learner_version):
                self.counters.consumed += 1
                return BufferTake(scored, dropped, len(self.entries))
            self.counters.dropped += 1
            dropped.append(scored.work)
        return BufferTake(None, dropped, 0)

    def depth(self) -> int:
        return len(self.entries)

    def clear(self) -> int:
        """Forgets queued batches (their work is re-issued after a resume); returns how many."""
        count = len(self.entries)
        self.entries.clear()
        return count

    def get_counters(self) -> BufferCounters:
        return BufferCounters(**asdict(self.counters))

    def set_counters(self, counters: BufferCounters) -> None:
        self.counters = BufferCounters(**asdict(counters))


def buffer_actor_class():
    """`TrajectoryBuffer` as a Ray actor class (ray imported only when the runtime runs)."""
    import ray

    return ray.remote(TrajectoryBuffer)
