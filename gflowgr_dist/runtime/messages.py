"""The typed messages that cross every Ray boundary of the runtime (never bare tuples).

A unit of work is one training batch (a few dozen examples), not one trajectory: a Ray call
or queue entry per trajectory costs far more than the trajectory itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gflowgr_dist.gfn.trajectories import TrajectoryBatch


@dataclass(frozen=True, order=True)
class WorkKey:
    """Which batch of which epoch: the cursor's unit of account."""

    epoch: int
    index: int


@dataclass
class SeedState:
    """The sampling streams a rollout starts from, so any actor reproduces the same batch.

    `numpy` is a `np.random.Generator`'s bit-generator state (a plain dict); `torch` is a
    `torch.Generator.get_state()` byte tensor as uint8 numpy, [5056].
    """

    numpy: dict
    torch: np.ndarray

    @classmethod
    def capture(cls, rng: np.random.Generator, generator: torch.Generator) -> SeedState:
        return cls(rng.bit_generator.state, generator.get_state().numpy().copy())

    @classmethod
    def seeded(cls, numpy_seed: list[int], torch_seed: int) -> SeedState:
        return cls.capture(
            np.random.default_rng(numpy_seed), torch.Generator().manual_seed(torch_seed)
        )

    def restore(self) -> tuple[np.random.Generator, torch.Generator]:
        rng = np.random.default_rng()
        rng.bit_generator.state = self.numpy
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(self.torch.copy()))
        return rng, generator

    def to_json(self) -> dict:
        return {"numpy": self.numpy, "torch": self.torch.tolist()}

    @classmethod
    def from_json(cls, blob: dict) -> SeedState:
        return cls(blob["numpy"], np.asarray(blob["torch"], dtype=np.uint8))


@dataclass
class WorkItem:
    """What the driver asks a rollout actor to do: sample trajectories for these examples.

    `progress` drives the sampler's schedule (the learner's step / total at issue time);
    `seed` is where the batch's sampling streams start; `attempt` counts re-issues.
    """

    key: WorkKey
    example_ids: np.ndarray  # [B] indices into the trainer's examples
    progress: float
    seed: SeedState
    attempt: int = 0


@dataclass
class RolloutResult:
    """A rollout actor's answer: the batch, where its streams ended, and what it cost."""

    work: WorkItem
    batch: TrajectoryBatch  # stamped with the actor's policy_version
    seed_after: SeedState
    actor: str
    seconds: float
    tokens: int  # trajectories x ID levels sampled or proposed


@dataclass
class ScoredBatch:
    """A rolled-out batch with its rewards: one trajectory-buffer entry."""

    work: WorkItem
    batch: TrajectoryBatch
    log_rewards: np.ndarray  # [E, T] float32
    rewards: np.ndarray  # [E, T] float32
    rollout_actor: str
    rollout_seconds: float
    reward_seconds: float
    tokens: int

    @property
    def policy_version(self) -> int:
        return int(self.batch.policy_version)


@dataclass
class BufferCounters:
    """Admission accounting of the trajectory buffer (checkpointed with the cursor)."""

    admitted: int = 0
    dropped: int = 0
    consumed: int = 0
    refused_full: int = 0


@dataclass
class BufferTake:
    """What one `take` returns: at most one fresh batch, plus the stale ones it dropped."""

    scored: ScoredBatch | None
    dropped: list[WorkItem] = field(default_factory=list)
    depth: int = 0


@dataclass
class SyncAck:
    """An actor's confirmation that it now serves `version`."""

    actor: str
    version: int
    load_seconds: float


@dataclass
class Health:
    """A cheap liveness answer; `version` is None until the actor has received weights."""

    actor: str
    role: str
    pid: int
    version: int | None
    calls: int
    node: str = ""  # Ray node id the actor runs on


def current_node() -> str:
    """The Ray node id of the calling process ("" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except ImportError:  # pragma: no cover - Ray is a core dependency
        return ""


def current_node_ip() -> str:
    """This process's node address as Ray sees it (127.0.0.1 on a loopback-only cluster)."""
    import ray

    return ray.util.get_node_ip_address()
